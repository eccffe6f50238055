/**
 * Every Redis key and channel of the cluster runtime, in one place. One prefix for all; a device's keys carry
 * the device in a hash tag (`{name}`) so that one device's keys stay in one slot.
 */
export const PREFIX = 'dw:';

export const keys = {
  /** Hash: `publicKey` (hex), `agents` (JSON list of HOST:PORT), `createdAt`. Never the private key. */
  cluster: `${PREFIX}cluster`,
  /** Sorted set: node name scored by its last heartbeat (epoch ms). */
  nodes: `${PREFIX}nodes`,
  /** Hash: one node's self-description (registry.ts). */
  node: (name: string) => `${PREFIX}node:${name}`,
  /** Hash: which node holds the device's session (`node`), and the fencing `epoch` of that claim. */
  owner: (device: string) => `${PREFIX}owner:{${device}}`,
  /** Hash: device → node it was last announced online at (absent: announced offline or never seen). */
  presence: `${PREFIX}presence`,
  /** String: `node|fence` of the holder of a lease; `fence` counts takeovers. */
  lease: (name: string) => `${PREFIX}lease:${name}`,
  fence: (name: string) => `${PREFIX}fence:${name}`,
  /** Hash: a pending redirect (PROTOCOL 7.16): device, from, to, deadline, session, state, resent. */
  redirect: (rid: string) => `${PREFIX}redirect:${rid}`,
  /** String (bytes): the session state handed over for a redirect (protocol/handover.ts). */
  handoverState: (rid: string) => `${PREFIX}handover:${rid}`,
  /** Counter: bytes sent again at hand-overs, over the cluster's life (goal 0). */
  redirectResent: `${PREFIX}stats:redirect:resent`,
} as const;

export const channels = {
  /** Messages for one node (wake a device, retire a session, cancel a message). */
  node: (name: string) => `${PREFIX}ch:node:${name}`,
  /** Messages for every node (event log appended, status changes, presence, a device removed). */
  all: `${PREFIX}ch:all`,
  /** Answers to one command of `relay drain|rebalance|move` (control.ts). */
  reply: (id: string) => `${PREFIX}ch:reply:${id}`,
} as const;
