import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/**
 * Temporary file, fsync, rename, fsync of the folder: a reader (a service manager, another process, the
 * next start) sees the old file or the new one, never half of one.
 */
export function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o644): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = fs.openSync(tmp, 'w', mode);
  try {
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  if (process.platform !== 'win32') fs.chmodSync(tmp, mode); // the umask does not decide
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

/** Makes a rename or a new file in `dir` durable (no-op on Windows, where folders cannot be fsync'd). */
export function fsyncDir(dir: string): void {
  if (process.platform === 'win32') return;
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
