// The derm_exp web page: upload an image to POST /predict and show what comes back.
// Plain browser JavaScript: no build step, no external script (works offline).
"use strict";

const $ = (id) => document.getElementById(id);
const REASONS = {
  low_confidence: "the model's confidence is below the abstention threshold",
  tta_disagreement: "the augmented views disagree",
  ensemble_disagreement: "the ensemble members disagree",
  input_too_small: "the image is too small",
  extreme_aspect_ratio: "the image has an extreme aspect ratio",
  nearly_uniform: "the image is nearly uniform",
  not_colour: "the image is not in colour",
  not_color: "the image is not in colour",
};

async function loadModel() {
  try {
    const card = await (await fetch("/model")).json();
    $("model-name").textContent = "Model: " + card.model;
    if (card.disclaimer) $("disclaimer").textContent = card.disclaimer;
    setUpMetadata(card.metadata);
    const health = await (await fetch("/health")).json();
    if (!health.explanations) {
      $("explain").checked = false;
      $("explain").disabled = true;
      $("heat-note").textContent = "heat maps are not available in this installation";
    }
  } catch (err) {
    $("model-name").textContent = "cannot reach the server: " + err;
  }
}

// Patient-metadata inputs, shown only for a model that uses them (GET /model says which).
const METADATA_FIELDS = ["age", "sex", "localization"];
let lastFile = null;

function setUpMetadata(meta) {
  if (!meta || !meta.uses_metadata) return;
  for (const field of meta.fields || []) {
    if (!METADATA_FIELDS.includes(field.name)) continue;
    $(field.name + "-field").hidden = false;
    if (field.type === "category") {
      const select = $(field.name);
      for (const value of field.values || []) select.append(new Option(value, value));
    }
  }
  $("metadata-help").textContent = "Fill these in before choosing the image (or press predict "
    + "again). " + (meta.missing || "");
  $("metadata-inputs").hidden = false;
}

function appendMetadata(form) {
  if ($("metadata-inputs").hidden) return;
  for (const name of METADATA_FIELDS) {
    if ($(name + "-field").hidden) continue;
    const value = $(name).value.trim();
    if (value !== "") form.append(name, value);
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

async function predict(file) {
  $("error").hidden = true;
  $("status").textContent = "predicting…";
  document.body.dataset.state = "busy";
  const form = new FormData();
  form.append("image", file);
  form.append("tta", $("tta").value);
  form.append("explain", $("explain").checked ? "true" : "false");
  appendMetadata(form);
  lastFile = file;
  $("again").hidden = $("metadata-inputs").hidden;
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) {
      showError(`${response.status}: ${body.error || "request failed"}`);
      document.body.dataset.state = "error";
      return;
    }
    render(file, body);
    $("status").textContent = `done in ${body.elapsed_ms} ms`;
    document.body.dataset.state = "done";
  } catch (err) {
    showError("cannot reach the server: " + err);
    document.body.dataset.state = "error";
  }
}

function render(file, r) {
  $("result").hidden = false;
  $("photo").src = URL.createObjectURL(file);
  $("predicted-class").textContent = r.predicted_class;
  $("predicted-description").textContent = r.predicted_class_description || "";
  $("confidence").textContent = (100 * r.confidence).toFixed(1) + " %";
  $("uncertainty").textContent = r.uncertainty.toFixed(3);
  const extra = [];
  if (r.view_std !== undefined) extra.push(`TTA ${r.tta.mode}: view std ${r.view_std.toFixed(3)}`);
  if (r.std !== undefined) extra.push(`ensemble std ${r.std.toFixed(3)}, disagreement ${r.disagreement.toFixed(2)}`);
  extra.push(r.calibrated ? "calibrated (temperature scaling)" : "uncalibrated");
  $("extra").textContent = extra.join(" · ");
  const note = $("metadata-note");
  note.hidden = !(r.metadata && r.metadata.model_uses_metadata);
  note.textContent = r.metadata ? "Patient metadata: " + r.metadata.note : "";
  renderDecision(r);
  drawChart(r.probabilities, r.predicted_class);
  renderHeatmap(r.explanation, r.explanation_error);
}

function renderDecision(r) {
  const el = $("decision");
  if (!r.decision) {
    $("policy").textContent = "";
    el.className = "decision";
    el.textContent = "No abstention rule in this model: the class below is always given.";
    return;
  }
  el.className = "decision " + r.decision;
  const reasons = (r.reasons || []).map((code) => REASONS[code] || code);
  const policy = r.abstention || {};
  $("policy").textContent = policy.threshold != null
    ? `abstains below confidence ${(100 * policy.threshold).toFixed(1)} % (${policy.source})`
    : "no confidence threshold in this model; the input-quality and disagreement checks apply";
  el.textContent = r.decision === "abstain"
    ? "Not sure: the model abstains" + (reasons.length ? " because " + reasons.join("; ") : "") + "."
    : "The model answers" + (reasons.length ? " (" + reasons.join("; ") + ")" : "") + ".";
}

function drawChart(probabilities, top) {
  const svg = $("chart");
  const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  const rowH = 26, labelW = 60, width = 460, barW = width - labelW - 70;
  svg.setAttribute("viewBox", `0 0 ${width} ${entries.length * rowH + 4}`);
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  entries.forEach(([name, p], i) => {
    const y = i * rowH + 2;
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 0); label.setAttribute("y", y + 17); label.textContent = name;
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("class", name === top ? "bar top" : "bar");
    bar.setAttribute("x", labelW); bar.setAttribute("y", y + 3);
    bar.setAttribute("width", Math.max(1, p * barW).toFixed(1)); bar.setAttribute("height", rowH - 8);
    bar.dataset.cls = name;
    const value = document.createElementNS(ns, "text");
    value.setAttribute("x", labelW + Math.max(1, p * barW) + 6); value.setAttribute("y", y + 17);
    value.textContent = (100 * p).toFixed(1) + " %";
    svg.append(label, bar, value);
  });
}

function renderHeatmap(explanation, error) {
  const heat = $("heatmap");
  if (!explanation) {
    heat.hidden = true;
    $("opacity-label").hidden = true;
    if (error) $("heat-note").textContent = "no heat map: " + error;
    return;
  }
  heat.src = explanation.heatmap_png;
  heat.hidden = false;
  $("opacity-label").hidden = false;
  heat.style.opacity = $("opacity").value / 100;
  const member = explanation.member ? ` of member ${explanation.member}` : "";
  $("heat-note").textContent = `${explanation.method}${member} for class ${explanation.target_class}`;
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) predict(e.target.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]);
  });
  $("again").addEventListener("click", () => { if (lastFile) predict(lastFile); });
  $("opacity").addEventListener("input", (e) => { $("heatmap").style.opacity = e.target.value / 100; });
  loadModel();
}

setUp();
