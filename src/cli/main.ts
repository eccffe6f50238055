import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { DropwireError } from '../shared/errors.js';
import { versionLine } from '../shared/version.js';
import { addNodeOptions, registerClusterCommands, storeOpt } from './relay-cluster.js';
import { registerOutboxCommands } from './outbox.js';
import { registerRuleCommands } from './rule-commands.js';
import { registerRelayMessageCommands } from './relay-message.js';
import { registerServiceCommands } from './service-commands.js';

/**
 * The one `dropwire` program. Commands parse options and call their feature, imported lazily; this file
 * is the only place that maps errors to exit codes (README "Exit codes").
 */
export const ExitCode = { OK: 0, ERROR: 1, USAGE: 2 } as const;

const program = new Command('dropwire')
  .description('Deliver files from web sites to hosts behind routers over one stable, encrypted, resumable connection.')
  .version(versionLine(), '-V, --version', 'print the version and the commit it was built from')
  .exitOverride()
  .showHelpAfterError();

const relay = program.command('relay').description('the relay: one server agents dial and senders call');
const dataOpt = () => new Option('--data <dir>', 'relay data folder').default('./dropwire-relay');

addNodeOptions(relay
  .command('start')
  .description('run the relay in the foreground (with --store: one node of a cluster)'))
  .addOption(dataOpt())
  .option('--listen <host:port>', 'address agents connect to', '0.0.0.0:7390')
  .option('--http <host:port>', 'address of the HTTP API', '127.0.0.1:7391')
  .option('--public <addresses>', 'addresses agents dial, written into enrollment tokens: HOST:PORT and/or wss://HOST/v1/connect, comma-separated (default: --listen)')
  .option('--max-body <bytes>', 'largest file accepted', (v) => parseInt(v, 10))
  .option('--body-timeout <s>', 'seconds an upload may send nothing before 408 DW_TIMEOUT', positiveNumber('--body-timeout'), 30)
  .option('--max-uploads <n>', 'uploads received at once, in total (429 DW_BUSY beyond)', positiveNumber('--max-uploads'), 1024)
  .option('--max-uploads-per-token <n>', 'uploads received at once per sender token', positiveNumber('--max-uploads-per-token'), 256)
  .option('--max-conns-per-ip <n>', 'connections from one IP address on the agents port', positiveNumber('--max-conns-per-ip'), 256)
  .option('--tls-cert <file>', 'serve the HTTP port (and agents\' wss://…/v1/connect) as HTTPS with this PEM certificate chain; re-read on SIGHUP and on change')
  .option('--tls-key <file>', 'the PEM private key for --tls-cert')
  .option('--downloads <dir>', 'executables and SHA256SUMS served at /download/ (default: release/ of the package)')
  .option('--metrics <host:port>', 'also serve GET /metrics without a token on this address of its own (on the HTTP port it needs an admin or --metrics token)')
  .action(async (o: { data: string; listen: string; http: string; public?: string; maxBody?: number; bodyTimeout: number; maxUploads: number; maxUploadsPerToken: number; maxConnsPerIp: number; store?: string; tlsCert?: string; tlsKey?: string; downloads?: string; metrics?: string }) => {
    const { runRelay } = await import('./relay.js');
    await runRelay(o);
  });

const device = relay.command('device').description('devices (hosts) that may connect');
device
  .command('add <name>')
  .description('register a device; prints its one-time enrollment token')
  .addOption(dataOpt())
  .addOption(storeOpt())
  .option('--public <addresses>', 'relay addresses for the token, comma-separated (default: the running relay\'s; a cluster\'s: all its agent addresses)')
  .option('--ttl <hours>', 'hours the token stays valid', (v) => Number(v), 24)
  .option('--send-to <glob>', 'names this device may send files to (default: nowhere)')
  .action(async (name: string, o: { data: string; store?: string; public?: string; ttl: number; sendTo?: string }) => {
    const { runDeviceAdd } = await import('./relay.js');
    await runDeviceAdd(o, name, o);
  });
device
  .command('allow <name>')
  .description('let a device send files: to the devices (or receiving sites) matching GLOB; \'-\' for nowhere')
  .addOption(dataOpt())
  .addOption(storeOpt())
  .requiredOption('--send-to <glob>', 'names it may send to, e.g. office or office-*')
  .action(async (name: string, o: { data: string; store?: string; sendTo: string }) => {
    const { allowDevice } = await import('../relay/admin.js');
    await allowDevice(o, name, o.sendTo);
    console.log(o.sendTo === '-' ? `device '${name}' sends nowhere` : `device '${name}' may send to '${o.sendTo}'`);
  });
device
  .command('list')
  .addOption(dataOpt())
  .addOption(storeOpt())
  .option('--json', 'JSON output')
  .action(async (o: { data: string; store?: string; json?: boolean }) => {
    const { printDevices } = await import('./relay.js');
    await printDevices(o, o.json === true);
  });
device
  .command('remove <name>')
  .description('remove a device and drop its live session')
  .addOption(dataOpt())
  .addOption(storeOpt())
  .action(async (name: string, o: { data: string; store?: string }) => {
    const { runDeviceRemove } = await import('./relay.js');
    await runDeviceRemove(o, name);
  });

const token = relay.command('token').description('sender API tokens');
token
  .command('add <name>')
  .description('create a sender token (printed once; stored only as a hash)')
  .addOption(dataOpt())
  .addOption(storeOpt())
  .option('--to <glob>', 'devices this token may send to', '*')
  .option('--webhook <url>', 'where status events are posted')
  .option('--receive', 'a site that receives files from devices: they may send --to NAME')
  .option('--deliver-url <url>', 'with --receive: POST each file there (signed); without it the site pulls GET /v1/inbox')
  .addOption(new Option('--admin', 'an operator token: signs in to the console at / and reads /metrics (it may also send)').conflicts('metrics'))
  .option('--metrics', 'a token that only reads /metrics (Prometheus); it cannot send')
  .action(async (name: string, o: { data: string; store?: string; to: string; webhook?: string; receive?: boolean; deliverUrl?: string; admin?: boolean; metrics?: boolean }) => {
    const { addToken } = await import('../relay/admin.js');
    const role = o.admin ? 'admin' : o.metrics ? 'metrics' : undefined;
    const t = await addToken(o, name, {
      ...(o.to !== '*' || !role ? { to: o.to } : {}),
      ...(o.webhook ? { webhook: o.webhook } : {}),
      ...(o.receive ? { receive: true } : {}),
      ...(o.deliverUrl ? { deliverUrl: o.deliverUrl } : {}),
      ...(role ? { role } : {}),
    });
    console.log(t.token);
    if (t.webhookSecret) console.log(`${o.deliverUrl && !o.webhook ? 'delivery' : 'webhook'} secret: ${t.webhookSecret}`);
  });
token
  .command('list')
  .addOption(dataOpt())
  .addOption(storeOpt())
  .option('--json', 'JSON output')
  .action(async (o: { data: string; store?: string; json?: boolean }) => {
    const { printTokens } = await import('./relay.js');
    await printTokens(o, o.json === true);
  });
token
  .command('remove <name>')
  .addOption(dataOpt())
  .addOption(storeOpt())
  .action(async (name: string, o: { data: string; store?: string }) => {
    const { runTokenRemove } = await import('./relay.js');
    await runTokenRemove(o, name);
  });

function positiveNumber(flag: string): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${flag} must be a positive number`);
    return n;
  };
}

const transportOpt = () => new Option('--transport <mode>', 'tcp, wss, or auto: TCP first, WSS when TCP does not connect within a few seconds').choices(['tcp', 'wss', 'auto']);
const homeOpt = () => new Option('--home <dir>', 'agent folder (default: DROPWIRE_HOME or a per-user folder)');

program
  .command('init <token>')
  .description('enroll this host with a relay, using a token from `relay device add`')
  .addOption(homeOpt())
  .option('--name <name>', 'device name (default: the one in the token)')
  .option('--relay <addresses>', 'relay addresses, comma-separated: HOST:PORT, wss://HOST[:PORT]/v1/connect or ws://… (overrides the token)')
  .addOption(transportOpt())
  .option('--proxy <url>', 'HTTP(S) proxy for wss:// (http://user:password@host:port; default HTTPS_PROXY, NO_PROXY)')
  .option('--ca <file>', 'PEM file of a private CA that signed the relay\'s certificate (kept in the config)')
  .action(async (tokenText: string, o: { home?: string; name?: string; relay?: string; transport?: string; proxy?: string; ca?: string }) => {
    const { runInit } = await import('./agent.js');
    await runInit(tokenText, o);
  });

program
  .command('agent')
  .description('run the agent in the foreground (what the service runs)')
  .addOption(homeOpt())
  .option('--relay <addresses>', 'relay addresses, comma-separated (overrides the config)')
  .addOption(transportOpt())
  .option('--proxy <url>', 'HTTP(S) proxy for wss:// (overrides the config and HTTPS_PROXY)')
  .option('--ca <file>', 'PEM file of a private CA (overrides the config)')
  .option('--refuse-redirects', 'stay on the relay node reached: refuse every move to another node (config "redirects": false)')
  .action(async (o: { home?: string; relay?: string; transport?: string; proxy?: string; ca?: string; refuseRedirects?: boolean }) => {
    const { runAgent } = await import('./agent.js');
    await runAgent(o);
  });

program
  .command('up')
  .description('relay + one local agent + a sender token on this machine; prints a curl command to try')
  .option('--dir <dir>', 'where both keep their data', './.dropwire')
  .option('--http <host:port>', 'HTTP API address', '127.0.0.1:7391')
  .action(async (o: { dir: string; http: string }) => {
    const { runUp } = await import('./up.js');
    await runUp(o);
  });

program
  .command('online <device>')
  .description('is DEVICE connected? exit 0 online, 1 offline (asks the relay with a sender token, or through this host\'s agent)')
  .option('--home <dir>', 'agent folder, when asking through this host\'s agent')
  .option('--api <url>', 'relay HTTP API (default: DROPWIRE_API)')
  .option('--token <token>', 'sender token (default: DROPWIRE_TOKEN)')
  .option('--json', 'JSON output')
  .action(async (name: string, o: { api?: string; token?: string; json?: boolean; home?: string }) => {
    const { runOnline } = await import('./online.js');
    await runOnline(name, o);
  });

program
  .command('send <files...>')
  .description('send files from this host to another device (or a receiving site); prints each message id')
  .requiredOption('--to <name>', 'the device (or site) to send to')
  .option('--wait [seconds]', 'wait for each file\'s final status; exit 0 only when handled', (v) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('--wait takes a number of seconds');
    return n;
  })
  .option('--json', 'one JSON object per file')
  .option('--seal', 'encrypt end to end to the recipient\'s key: the relay stores ciphertext only')
  .addOption(homeOpt())
  .action(async (files: string[], o: { to: string; wait?: number | true; json?: boolean; seal?: boolean; home?: string }) => {
    const { runSend } = await import('./send.js');
    await runSend(files, o);
  });

// Command groups declared in their own files.
registerClusterCommands(relay);
registerRuleCommands(program);
registerServiceCommands(program);
registerRelayMessageCommands(relay);
registerOutboxCommands(program);

async function main(argv: string[]): Promise<number> {
  try {
    await program.parseAsync(argv);
    return ExitCode.OK;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? ExitCode.OK : ExitCode.USAGE;
    if (err instanceof DropwireError) {
      process.stderr.write(`dropwire: ${err.code}: ${err.message}\n`);
      return (err as { exitCode?: number }).exitCode ?? ExitCode.ERROR;
    }
    process.stderr.write(`dropwire: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
    return ExitCode.ERROR;
  }
}

// No top-level await: the release bundle is a CommonJS script (scripts/release.mjs).
void main(process.argv).then((code) => {
  if (code !== 0) process.exit(code);
});
