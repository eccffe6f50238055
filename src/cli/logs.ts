import { findLogSource, showLogs, type LevelName } from '../service/logs.js';
import { resolveAgentHome } from '../service/locations.js';

/** `dropwire logs`: prints until done, or with -f until Ctrl-C / SIGTERM (or the reader goes away). */
export async function runLogs(o: { follow?: boolean; lines: number; json?: boolean; level?: string; id?: string; home?: string }): Promise<void> {
  const home = resolveAgentHome(o.home);
  const source = await findLogSource(home);
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.stdout.on('error', onSignal); // EPIPE: `dropwire logs -f | head`
  try {
    await showLogs(source, {
      follow: o.follow === true,
      lines: o.lines,
      json: o.json === true,
      ...(o.level ? { level: o.level as LevelName } : {}),
      ...(o.id ? { id: o.id } : {}),
      out: (line) => {
        if (!stop.signal.aborted) process.stdout.write(line + '\n');
      },
      signal: stop.signal,
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
