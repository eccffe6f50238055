import { readFileSync } from 'node:fs';

/** True while `pid` exists and is not a zombie (Linux /proc; elsewhere signal 0 alone decides). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/su.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}
