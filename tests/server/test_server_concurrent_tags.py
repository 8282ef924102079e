"""Two sweepers of one study tag the study's parent run at the same moment (its description on
start, ``best.*`` as trials finish). Through the server's PostgreSQL store, MLflow's ``set_tag``
(select, then insert) let two writers of one new key collide on ``tag_pk``; the sweeper's
:func:`~derm_exp.tuning.tracking.set_tags` goes through ``log_batch``, whose store retries."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from mlflow.tracking import MlflowClient

from derm_exp.tuning.tracking import set_tags
from tests.server.helpers import Server

ROUNDS = 25


def test_two_writers_of_the_same_new_tags_both_succeed(server: Server) -> None:
    client = MlflowClient(server.uri)
    experiment = client.create_experiment(f"tags-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment).info.run_id
    barrier = threading.Barrier(2)

    def writer(name: str) -> None:
        for i in range(ROUNDS):
            barrier.wait(timeout=60)  # both insert key i together
            set_tags(client, run_id, {f"best.k{i}": name, f"desc.k{i}": name})

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(writer, name) for name in ("a", "b")]:
            future.result(timeout=300)  # raises what a writer raised

    tags = client.get_run(run_id).data.tags
    for i in range(ROUNDS):
        assert tags[f"best.k{i}"] in ("a", "b") and tags[f"desc.k{i}"] in ("a", "b")


def test_more_tags_than_one_batch_holds(server: Server) -> None:
    client = MlflowClient(server.uri)
    experiment = client.create_experiment(f"tags-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment).info.run_id
    set_tags(client, run_id, {f"t{i}": i for i in range(150)})  # MLflow's batch limit is 100
    tags = client.get_run(run_id).data.tags
    assert all(tags[f"t{i}"] == str(i) for i in range(150))
