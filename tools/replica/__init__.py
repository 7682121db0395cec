"""The local replica of the cluster behind tools/local_cluster.py (its command line).

state       the typed state (`Replica`, `Part`) in DIR/state.json, the folder's lock, and
            `LocalClusterError`, the one error a user sees
processes   the process table from /proc: a part's processes by session, marker variable
            and descendants; stopping parts by PID (SIGTERM, grace, then SIGKILL)
parts       starting S3 (moto), the MLflow server and Ray nodes, waiting until each is
            ready; ports, the replica's Ray token, clearing a stopped replica's leftovers
operations  the commands' work: up, down, add-node, kill-node, preempt-node's notice and
            kill, stop-/start-/restart-tracking
ray_nodes   the Ray nodes as Ray lists them (a part's node id, by its label) and draining
            one for preemption, through Ray's CLI with the replica's address and token
report      what the commands print: status lines, shell exports (the Ray client's
            variables), the training command
"""
