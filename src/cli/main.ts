import { Command, CommanderError, Option } from 'commander';
import { DropwireError } from '../shared/errors.js';
import { registerRuleCommands } from './rule-commands.js';
import { registerServiceCommands } from './service-commands.js';

/**
 * The one `dropwire` program. Commands parse options and call their feature, imported lazily; this file
 * is the only place that maps errors to exit codes (README "Exit codes").
 */
export const ExitCode = { OK: 0, ERROR: 1, USAGE: 2 } as const;

const program = new Command('dropwire')
  .description('Deliver files from web sites to hosts behind routers over one stable, encrypted, resumable connection.')
  .version('0.1.0')
  .exitOverride()
  .showHelpAfterError();

const relay = program.command('relay').description('the relay: one server agents dial and senders call');
const dataOpt = () => new Option('--data <dir>', 'relay data folder').default('./dropwire-relay');

relay
  .command('start')
  .description('run the relay in the foreground')
  .addOption(dataOpt())
  .option('--listen <host:port>', 'address agents connect to', '0.0.0.0:7390')
  .option('--http <host:port>', 'address of the HTTP API', '127.0.0.1:7391')
  .option('--public <addresses>', 'addresses agents dial, written into enrollment tokens: HOST:PORT and/or wss://HOST/v1/connect, comma-separated (default: --listen)')
  .option('--max-body <bytes>', 'largest file accepted', (v) => parseInt(v, 10))
  .option('--tls-cert <file>', 'serve the HTTP port (and agents\' wss://…/v1/connect) as HTTPS with this PEM certificate chain; re-read on SIGHUP and on change')
  .option('--tls-key <file>', 'the PEM private key for --tls-cert')
  .action(async (o: { data: string; listen: string; http: string; public?: string; maxBody?: number; tlsCert?: string; tlsKey?: string }) => {
    const { runRelay } = await import('./relay.js');
    await runRelay(o);
  });

const device = relay.command('device').description('devices (hosts) that may connect');
device
  .command('add <name>')
  .description('register a device; prints its one-time enrollment token')
  .addOption(dataOpt())
  .option('--public <addresses>', 'relay addresses for the token, comma-separated (default: the running relay\'s)')
  .option('--ttl <hours>', 'hours the token stays valid', (v) => Number(v), 24)
  .action(async (name: string, o: { data: string; public?: string; ttl: number }) => {
    const { addDevice } = await import('../relay/admin.js');
    console.log(await addDevice(o.data, name, { ...(o.public ? { public: o.public } : {}), ttlHours: o.ttl }));
  });
device
  .command('list')
  .addOption(dataOpt())
  .option('--json', 'JSON output')
  .action(async (o: { data: string; json?: boolean }) => {
    const { printDevices } = await import('./relay.js');
    await printDevices(o.data, o.json === true);
  });
device
  .command('remove <name>')
  .description('remove a device and drop its live session')
  .addOption(dataOpt())
  .action(async (name: string, o: { data: string }) => {
    const { removeDevice } = await import('../relay/admin.js');
    await removeDevice(o.data, name);
  });

const token = relay.command('token').description('sender API tokens');
token
  .command('add <name>')
  .description('create a sender token (printed once; stored only as a hash)')
  .addOption(dataOpt())
  .option('--to <glob>', 'devices this token may send to', '*')
  .option('--webhook <url>', 'where status events are posted')
  .action(async (name: string, o: { data: string; to: string; webhook?: string }) => {
    const { addToken } = await import('../relay/admin.js');
    const t = await addToken(o.data, name, { to: o.to, ...(o.webhook ? { webhook: o.webhook } : {}) });
    console.log(t.token);
    if (t.webhookSecret) console.log(`webhook secret: ${t.webhookSecret}`);
  });
token
  .command('list')
  .addOption(dataOpt())
  .option('--json', 'JSON output')
  .action(async (o: { data: string; json?: boolean }) => {
    const { printTokens } = await import('./relay.js');
    await printTokens(o.data, o.json === true);
  });
token
  .command('remove <name>')
  .addOption(dataOpt())
  .action(async (name: string, o: { data: string }) => {
    const { removeToken } = await import('../relay/admin.js');
    await removeToken(o.data, name);
  });

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
  .action(async (o: { home?: string; relay?: string; transport?: string; proxy?: string; ca?: string }) => {
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

// Command groups declared in their own files.
registerRuleCommands(program);
registerServiceCommands(program);

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

const code = await main(process.argv);
if (code !== 0) process.exit(code);
