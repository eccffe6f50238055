import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { fromHex, toHex } from '../protocol/bytes.js';
import { generateKeyPair, type CryptoBackend, type KeyPair } from '../protocol/crypto.js';
import { nodeCrypto } from '../protocol/crypto-node.js';
import { DropwireError } from '../shared/errors.js';
import { writeFileAtomic } from '../shared/files.js';

export const random = (n: number): Uint8Array => new Uint8Array(randomBytes(n));

/**
 * A long-term X25519 key pair in a file readable only by its owner: `{ "publicKey": hex, "privateKey": hex }`.
 * Created atomically (temporary file, fsync, rename) the first time.
 */
export function loadOrCreateKeyPair(file: string, crypto: CryptoBackend = nodeCrypto): KeyPair {
  try {
    const o = JSON.parse(fs.readFileSync(file, 'utf8')) as { privateKey?: string };
    if (typeof o.privateKey !== 'string') throw new Error('no privateKey');
    return crypto.keyPairFromPrivate(fromHex(o.privateKey));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new DropwireError('DW_BAD_KEY_FILE', `key file ${file} is unreadable; it was left as it is`, { cause: err });
    }
  }
  const pair = generateKeyPair(crypto, random);
  writeFileAtomic(file, JSON.stringify({ publicKey: toHex(pair.publicKey), privateKey: toHex(pair.privateKey) }) + '\n', 0o600);
  return pair;
}
