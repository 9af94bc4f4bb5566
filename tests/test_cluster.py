"""How a training process learns the job it belongs to: flags, TF_CONFIG, Keras' variables; one-line errors."""

import json

import pytest
from marsseg.train import cluster
from marsseg.train.cluster import Job

TF_CONFIG = {"cluster": {"chief": ["node0:7777"], "worker": ["node1:7777", "node2:7777"]},
             "task": {"type": "worker", "index": 1}}


@pytest.fixture(autouse=True)
def no_job(monkeypatch):
    for key in ("TF_CONFIG", *cluster.KERAS_ENV):
        monkeypatch.delenv(key, raising=False)


def test_no_description_is_a_single_process_run():
    assert cluster.describe() is None


def test_tf_config_orders_the_chief_then_the_workers_and_the_first_coordinates(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(TF_CONFIG))
    assert cluster.describe() == Job("node0:7777", 3, 2)
    no_chief = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    assert cluster.from_tf_config(json.dumps(no_chief)) == Job("a:1", 2, 0)


def test_keras_variables_and_flags(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "n0:9,n1:9")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    assert cluster.describe() == Job("n0:9", 2, 1)
    assert cluster.describe("h:1", 4, 3) == Job("h:1", 4, 3)  # flags come first


@pytest.mark.parametrize(("text", "words"), [
    ("{not json", "TF_CONFIG: expected"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "TF_CONFIG: expected"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 5}}), "TF_CONFIG: expected"),
])
def test_a_bad_tf_config_is_one_line(monkeypatch, text, words):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ValueError, match=words) as e:
        cluster.describe()
    assert "\n" not in str(e.value)


def test_incomplete_flags_and_bad_ids_are_refused():
    with pytest.raises(ValueError, match="go together"):
        cluster.describe("h:1", 2, None)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        cluster.describe("h:1", 2, 2)


def test_a_job_needs_the_jax_backend(monkeypatch):
    monkeypatch.setattr(cluster.keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        cluster.join(Job("h:1", 2, 0))
    cluster.join(Job("h:1", 1, 0))  # one process is no job: nothing to join
