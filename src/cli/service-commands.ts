import { InvalidArgumentError, Option, type Command } from 'commander';

/** `dropwire service …`, `logs`, `status`: declared here, features imported lazily. */
export function registerServiceCommands(program: Command): void {
  const homeOpt = () => new Option('--home <dir>', 'agent folder (default: DROPWIRE_HOME, the per-user folder, or the system install\'s)');
  const service = program.command('service').description('run the agent (or the relay) as an OS service: systemd, launchd, Windows (WinSW)');

  const common = (c: Command, what: string) =>
    c
      .option('--user', `the per-user service (systemd --user unit in the graphical session; macOS LaunchAgent)`)
      .option('--system', 'the system service (systemd system unit with its own account; macOS LaunchDaemon)')
      .option('--relay', `${what} the relay instead of the agent`)
      .option('--dry-run', 'print every file and command, change nothing')
      .addOption(new Option('--platform <platform>', 'the target platform (default: this one)').choices(['linux', 'darwin', 'win32']));

  common(service.command('install'), 'install')
    .description('write the service definition from service-templates/, enable it, and start it once the agent is enrolled')
    .option('--root <dir>', 'write the files under this folder instead of / and run no command')
    .option('--home <dir>', 'agent folder of a --user service (system services use /etc/dropwire, %ProgramData%\\dropwire, /Library/Application Support/dropwire)')
    .option('--account <name>', 'account a system service runs as (default: dropwire; macOS _dropwire; Windows: you)')
    .option('--node <path>', 'node executable the service runs (default: this one)')
    .option('--cli <path>', 'dropwire.js the service runs (default: this one)')
    .option('--winsw <path>', 'Windows: WinSW 3 executable to copy next to the service definition')
    .option('--listen <host:port>', 'relay: address agents connect to', '0.0.0.0:7390')
    .option('--http <host:port>', 'relay: address of the HTTP API', '127.0.0.1:7391')
    .option('--public <host:port>', 'relay: address agents dial, written into enrollment tokens')
    .action(async (o: ServiceCliOptions) => {
      const { runService } = await import('./service.js');
      await runService('install', o);
    });

  common(service.command('uninstall'), 'uninstall')
    .description('stop, disable and remove the service definition (the agent folder and its data stay)')
    .option('--root <dir>', 'remove the files under this folder and run no command')
    .action(async (o: ServiceCliOptions) => {
      const { runService } = await import('./service.js');
      await runService('uninstall', o);
    });

  for (const action of ['start', 'stop', 'status'] as const) {
    common(service.command(action), action)
      .description(`${action} the installed service through the service manager`)
      .action(async (o: ServiceCliOptions) => {
        const { runService } = await import('./service.js');
        await runService(action, o);
      });
  }

  program
    .command('logs')
    .description("the agent's log: readable lines (or JSON with --json); the journal when it runs under systemd")
    .option('-f, --follow', 'keep printing new lines, like tail -f')
    .option('-n, --lines <n>', 'how many of the last lines to print first', (v) => parseCount(v), 10)
    .option('--json', 'print the JSON lines as they are')
    .addOption(new Option('--level <level>', 'only lines at this level or above').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']))
    .option('--id <message>', "only one message's lines")
    .addOption(homeOpt())
    .action(async (o: { follow?: boolean; lines: number; json?: boolean; level?: string; id?: string; home?: string }) => {
      const { runLogs } = await import('./logs.js');
      await runLogs(o);
    });

  program
    .command('status')
    .description('ask the running agent: connected or not, relay, since when, resumes, queue, last message, last error (exit 0 connected, 3 not running, 4 not connected)')
    .option('--json', 'JSON output')
    .addOption(homeOpt())
    .action(async (o: { json?: boolean; home?: string }) => {
      const { runStatus } = await import('./status.js');
      await runStatus(o);
    });
}

export interface ServiceCliOptions {
  user?: boolean;
  system?: boolean;
  relay?: boolean;
  dryRun?: boolean;
  platform?: 'linux' | 'darwin' | 'win32';
  root?: string;
  home?: string;
  account?: string;
  node?: string;
  cli?: string;
  winsw?: string;
  listen?: string;
  http?: string;
  public?: string;
}

function parseCount(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('not a count');
  return n;
}
