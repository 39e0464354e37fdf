#!/bin/bash
# speechbs on several machines without a scheduler: run this script on EVERY node.
#
#   HEAD=node01 NUM_NODES=2 GPUS_PER_NODE=8 recipes/launch/multinode.sh RECIPE.toml [--set ...]
#
# HEAD is a hostname or address of one of the nodes that all nodes can reach;
# port RDZV_PORT (29400) must be open between them. The c10d rendezvous needs no etcd
# and assigns ranks itself, so the same command works on every node.
# SIGTERM or SIGUSR1 to torchrun reaches every rank of its node (--signals-to-handle,
# torch >= 2.9): they save the step in flight and exit 75; torchrun itself then exits 1.
#
# When a node is lost, the agents left restart their workers (up to MAX_RESTARTS
# times, default 3) and wait for a node to take its place: start this script again
# there (or on a spare). The job resumes from the last checkpoint. Gloo binds the
# interface of the hostname's address; where that is the wrong one, set
# GLOO_SOCKET_IFNAME (NCCL: NCCL_SOCKET_IFNAME).
set -euo pipefail

RECIPE=${1:?usage: HEAD=host NUM_NODES=n recipes/launch/multinode.sh RECIPE.toml [speechbs pretrain options]}
shift
: "${HEAD:?set HEAD to the hostname of the first node}"
NUM_NODES=${NUM_NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RDZV_PORT=${RDZV_PORT:-29400}

export OMP_NUM_THREADS=1
# torch 2.13 shares the rendezvous store with the workers by default, and then a replacement node
# waits forever for store details that the surviving agents never publish again (tests/test_multinode.py).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec torchrun --nnodes "$NUM_NODES" --nproc-per-node "$GPUS_PER_NODE" \
    --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:$RDZV_PORT" --rdzv-id "speechbs-${RUN_ID:-1}" \
    --max-restarts "${MAX_RESTARTS:-3}" \
    -m speechbs pretrain "$RECIPE" "$@"
