/** Files at least this large get a progress bar on a terminal. */
export const PROGRESS_MIN_BYTES = 1024 * 1024;
const WIDTH = 24;
const REDRAW_MS = 100;

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

function clock(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '--:--';
  const t = Math.round(s);
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}`;
}

/**
 * One line redrawn in place: `name [#####-------]  42%  84.0/200.0 MiB  21.3 MiB/s  00:05 left`. The bytes
 * counted are the relay's (what it has on disk), so the bar never runs ahead of what is safe.
 */
export class ProgressBar {
  private readonly out: NodeJS.WriteStream;
  private readonly name: string;
  private readonly size: number;
  private readonly start = Date.now();
  private startBytes: number | undefined;
  private drawnAt = 0;
  private done = false;

  constructor(out: NodeJS.WriteStream, name: string, size: number) {
    this.out = out;
    this.name = name.length > 30 ? `…${name.slice(-29)}` : name;
    this.size = size;
  }

  update(bytes: number): void {
    if (this.done) return;
    this.startBytes ??= bytes; // a resumed upload: the rate counts only what moves now
    const now = Date.now();
    if (now - this.drawnAt < REDRAW_MS && bytes < this.size) return;
    this.drawnAt = now;
    const frac = this.size === 0 ? 1 : Math.min(1, bytes / this.size);
    const filled = Math.round(frac * WIDTH);
    const secs = Math.max(0.001, (now - this.start) / 1000);
    const rate = (bytes - this.startBytes) / secs;
    const left = rate > 0 ? (this.size - bytes) / rate : Infinity;
    const line = `${this.name} [${'#'.repeat(filled)}${'-'.repeat(WIDTH - filled)}] ${String(Math.floor(frac * 100)).padStart(3)}%  ${mib(bytes)}/${mib(this.size)}  ${mib(rate)}/s  ${clock(left)} left`;
    this.out.write(`\r${line}\x1b[K`);
  }

  finish(): void {
    if (this.done) return;
    this.update(this.size);
    this.done = true;
    this.out.write('\n');
  }
}
