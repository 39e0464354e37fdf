#!/bin/bash
# speechbs on several machines without a scheduler: run this script on EVERY node.
#
#   HEAD=node01 NUM_NODES=2 GPUS_PER_NODE=8 recipes/launch/multinode.sh RECIPE.toml [--set ...]
#
# HEAD is a hostname or address of one of the nodes that all nodes can reach;
# port 29400 must be open between them. The c10d rendezvous needs no etcd and
# assigns ranks itself, so the same command works on every node.
set -euo pipefail

RECIPE=${1:?usage: HEAD=host NUM_NODES=n recipes/launch/multinode.sh RECIPE.toml [speechbs pretrain options]}
shift
: "${HEAD:?set HEAD to the hostname of the first node}"
NUM_NODES=${NUM_NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}

export OMP_NUM_THREADS=1
exec torchrun --nnodes "$NUM_NODES" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:29400" --rdzv-id "speechbs-${RUN_ID:-1}" \
    -m speechbs pretrain "$RECIPE" "$@"
