"""The REST API and web page: ``python -m derm_exp.serve model=<ref>``.

Research and education only; not a medical device. Do not use for diagnosis.

:mod:`~derm_exp.service.app` (the FastAPI app factory), :mod:`~derm_exp.service.batching`
(micro-batching), :mod:`~derm_exp.service.limits` (upload checks),
:mod:`~derm_exp.service.preparing` (decoding and preprocessing outside the model thread),
:mod:`~derm_exp.service.metadata` (patient metadata with an upload),
:mod:`~derm_exp.service.model_card` (``GET /model``), :mod:`~derm_exp.service.explain` (heat
maps) and ``static/`` (the page at ``/``: plain HTML, JS and CSS, no build step, no CDN).
"""
