#!/bin/sh
# Issue 12's full-size cluster run (too slow for `npm test` on two cores): three nodes + redis-server on
# loopback, 30 agents, 3,000 files of 1 KiB-5 MiB posted round-robin to the three HTTP ports while one node
# at a time is SIGKILLed and restarted every 5 s; every file handled exactly once, SHA-256 intact, order kept.
# Prints how long each killed node's agents took to be back on the other nodes.
set -e
cd "$(dirname "$0")/.."
npm run build >/dev/null
CLUSTER_AGENTS="${CLUSTER_AGENTS:-30}" CLUSTER_MESSAGES="${CLUSTER_MESSAGES:-3000}" \
  npx vitest run test/e2e/cluster-chaos.test.ts --testTimeout=3600000
