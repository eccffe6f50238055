import path from 'node:path';
import type { Headers, MessageType } from '../protocol/messages.js';
import { DropwireError } from '../shared/errors.js';
import type { SendRequest } from './control.js';
import type { Sender } from './send.js';

/** What `dropwire send` reports for one file. */
export interface FileOutcome {
  file: string;
  filename: string;
  id?: string;
  status?: string;
  final?: boolean;
  result?: Record<string, unknown>;
  error?: { code: string; message: string };
}

export interface SendJobDeps {
  sender: Sender;
  presence: (device: string) => Promise<Headers[typeof MessageType.PRESENCE]>;
  /** This device's name (the sender bound into a seal) and a folder for sealed copies. */
  identity: { name: string; home: string };
}

const PROGRESS_EVERY_MS = 100;
/** `dropwire send` fails (DW_NOT_CONNECTED) when the agent has had no session to the relay for this long. */
export const SEND_CONNECT_MS = 30_000;

async function connected(sender: Sender, ms: number): Promise<void> {
  for (const end = Date.now() + ms; !sender.ready; ) {
    if (Date.now() > end) throw new DropwireError('DW_NOT_CONNECTED', `the agent has not reached the relay within ${ms / 1000} s (see 'dropwire status')`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * `dropwire send FILE… --to NAME`: each file in turn over the session; `emit` gets `start`, `progress`,
 * `sent` (the message id) and, with `wait`, `status` lines. One file's failure does not stop the others.
 */
export async function runSendJob(d: SendJobDeps, req: Omit<SendRequest, 'op'>, emit: (line: Record<string, unknown>) => void): Promise<{ results: FileOutcome[] }> {
  await connected(d.sender, SEND_CONNECT_MS);
  let recipientPublic: string | undefined;
  if (req.seal) {
    const p = await d.presence(req.to);
    if (!p.known) throw new DropwireError('DW_UNKNOWN_DEVICE', `no device named '${req.to}'`);
    if (!p.publicKey) throw new DropwireError('DW_NO_KEY', `'${req.to}' has no public key to seal to (not enrolled yet, or a relay without sealing)`);
    recipientPublic = p.publicKey;
  }
  const results: FileOutcome[] = [];
  for (const file of req.files) {
    const out: FileOutcome = { file, filename: path.basename(file) };
    results.push(out);
    let last = 0;
    try {
      emit({ event: 'start', file });
      out.id = await d.sender.send({
        file,
        to: req.to,
        ...(recipientPublic ? { seal: { recipientPublic, sender: d.identity.name, workDir: path.join(d.identity.home, 'sending') } } : {}),
        onProgress: (p) => {
          const now = Date.now();
          if (now - last < PROGRESS_EVERY_MS && p.acked < p.size) return;
          last = now;
          emit({ event: 'progress', file, size: p.size, sent: p.sent, acked: p.acked });
        },
      });
      emit({ event: 'sent', file, id: out.id });
      if (req.wait && req.wait > 0) {
        const st = await d.sender.waitFinal(out.id, req.wait * 1000);
        out.status = st.status;
        out.final = st.final;
        if (st.result) out.result = st.result;
        emit({ event: 'status', file, id: out.id, status: st.status, final: st.final, ...(st.result ? { result: st.result } : {}) });
      }
    } catch (err) {
      out.error = { code: (err as { code?: string }).code ?? 'DW_INTERNAL', message: (err as Error).message };
      emit({ event: 'error', file, ...out.error });
    }
  }
  return { results };
}
