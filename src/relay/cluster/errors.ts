import { DropwireError } from '../../shared/errors.js';

/** Stable codes of the cluster runtime (README "Several nodes"). */
export const ClusterCode = {
  /** `relay cluster init` on a Redis database that already holds a cluster. */
  ALREADY_INITIALISED: 'DW_CLUSTER_EXISTS',
  /** `relay start --store` on a database `relay cluster init` never ran on. */
  NOT_INITIALISED: 'DW_CLUSTER_NOT_INITIALISED',
  /** The node's `--key` is not the cluster's key. */
  KEY_MISMATCH: 'DW_CLUSTER_KEY_MISMATCH',
  /** A `--store` URL that does not name a Redis (the store's own code for store URLs). */
  BAD_STORE_URL: 'DW_STORE_URL',
  /** A bad option value (e.g. an empty `--public`). */
  BAD_ARGUMENT: 'DW_BAD_ARGUMENT',
  /** Redis could not be reached or answered an error. */
  STORE_DOWN: 'DW_STORE_DOWN',
  BAD_NODE_NAME: 'DW_BAD_NODE_NAME',
} as const;

export class ClusterError extends DropwireError {
  constructor(code: (typeof ClusterCode)[keyof typeof ClusterCode], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ClusterError';
  }
}
