"""`tools/local_cluster.py preempt-node`: which Ray node it drains (found by the label every
replica node starts with, in what `ray list nodes --format=json` prints) and what it refuses
before it touches a cluster. Draining and killing a running replica's node is exercised with
the replica itself (tests/test_cluster_path.py)."""

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

import local_cluster  # noqa: E402
from replica.parts import NODE_LABEL  # noqa: E402
from replica.ray_nodes import node_id_of  # noqa: E402
from replica.state import LocalClusterError, Part, Replica, save_state  # noqa: E402

# `ray list nodes --format=json` on a 3-node replica after `preempt-node 2` (Ray 2.60; fields
# the lookup does not read left out).
LISTING = json.loads("""[
 {"node_id": "1ae1e27c284fb0251043c512403b2701a35a8bc87bd406493da3f5d5", "is_head_node": true,
  "state": "ALIVE", "state_message": null,
  "labels": {"ray.io/node-id": "1ae1e27c284fb0251043c512403b2701a35a8bc87bd406493da3f5d5",
             "apcnet_replica_node": "n0"}},
 {"node_id": "84fe0449efb4eb39c1028c18f954c8197fceaba11663442e4684c9c8", "is_head_node": false,
  "state": "DEAD",
  "state_message": "Terminated due to preemption: local replica /tmp/pn: n2 preempted in 10 s",
  "labels": {"ray.io/node-id": "84fe0449efb4eb39c1028c18f954c8197fceaba11663442e4684c9c8",
             "apcnet_replica_node": "n2"}},
 {"node_id": "86a2cae2608fe38c8c81fd8a0afef17f1f0863f28d58ea94f4137185", "is_head_node": false,
  "state": "ALIVE", "state_message": null,
  "labels": {"ray.io/node-id": "86a2cae2608fe38c8c81fd8a0afef17f1f0863f28d58ea94f4137185",
             "apcnet_replica_node": "n1"}}
]""")


def test_the_node_drained_is_the_live_one_labelled_with_the_part_name():
    assert node_id_of(LISTING, "n1") == "86a2cae2608fe38c8c81fd8a0afef17f1f0863f28d58ea94f4137185"


def test_a_node_ray_has_dead_is_refused():
    with pytest.raises(LocalClusterError, match="Ray has n2 dead"):
        node_id_of(LISTING, "n2")


def test_nodes_without_the_replica_label_are_refused_with_what_to_do():
    unlabelled = [
        {**row, "labels": {k: v for k, v in row["labels"].items() if k != NODE_LABEL}}
        for row in LISTING
    ]
    with pytest.raises(LocalClusterError, match="bring the replica down and up"):
        node_id_of(unlabelled, "n1")


def test_less_than_a_second_of_notice_is_refused_in_one_line(tmp_path, capsys):
    arguments = ["preempt-node", "1", "--deadline-s", "0", "--dir", str(tmp_path)]
    assert local_cluster.main(arguments) == 2
    assert capsys.readouterr().err == "error: --deadline-s 0: give at least 1 s of notice\n"


def test_the_head_is_never_preempted(tmp_path, capsys):
    replica = Replica(str(tmp_path), "apcnet", 2, 256, 6379, 8265, 5000, 5001)
    for name in ("n0", "n1", "n2"):
        replica.record(Part(name, 1000, 0, f"{tmp_path}/logs/{name}.log", {}))
    save_state(replica)
    arguments = ["preempt-node", "0", "--deadline-s", "5", "--dir", str(tmp_path)]
    assert local_cluster.main(arguments) == 2
    assert capsys.readouterr().err.startswith("error: no worker node 0 (workers: 1 to 2;")
