/**
 * Aedes (in-memory persistence, its default) on 127.0.0.1 in its own process, so the bench measures its
 * RSS and CPU the same way as the relay's. argv[2] is the port (0 picks one); pushes `ready` { port }.
 */
import net from 'node:net';
import { Aedes } from 'aedes';
import { hrNow, serveParent } from './common.js';

async function main(): Promise<void> {
  const broker = await Aedes.createBroker();
  const server = net.createServer({ noDelay: true }, broker.handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= new Promise<void>((resolve) => {
      server.close();
      broker.close(() => resolve());
    }));
  const { emit } = serveParent({
    stats: () => ({ clients: broker.connectedClients, memory: process.memoryUsage() }),
    close: async () => {
      await close();
      setTimeout(() => process.exit(0), 10);
      return true;
    },
  });
  process.on('SIGTERM', () => {
    void close().then(() => process.exit(0));
  });
  emit({ event: 'ready', port, at: hrNow() });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
