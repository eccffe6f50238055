import { applyPlan } from '../service/apply.js';
import { hostPlatform } from '../service/locations.js';
import { checkNotTemporary, controlPlan, detectScope, gatherFacts, installPlan, resolveTarget, uninstallPlan, type ServiceOptions, type Target } from '../service/plan.js';
import { DropwireError } from '../shared/errors.js';
import type { ServiceCliOptions } from './service-commands.js';

type Action = 'install' | 'uninstall' | 'start' | 'stop' | 'status';

const usage = (message: string) => Object.assign(new DropwireError('DW_USAGE', message), { exitCode: 2 });

export async function runService(action: Action, o: ServiceCliOptions): Promise<void> {
  if (o.user && o.system) throw usage('--user and --system exclude each other');
  const platform = o.platform ?? hostPlatform();
  if (platform !== hostPlatform() && !o.dryRun && !o.root) throw usage(`this is ${hostPlatform()}: a service for ${platform} can only be shown (--dry-run) or written into a folder (--root)`);
  const options: ServiceOptions = {
    platform,
    role: o.relay ? 'relay' : 'agent',
    ...(o.user ? { scope: 'user' as const } : o.system ? { scope: 'system' as const } : {}),
    ...pick(o, ['home', 'account', 'node', 'cli', 'winsw', 'listen', 'http', 'public']),
  };
  if (action !== 'install') {
    const scope = detectScope(options, o.root);
    if (scope) options.scope = scope;
  }
  const t = resolveTarget(options);
  if (action === 'install') checkNotTemporary(t);
  if (!o.dryRun && !o.root) checkPrivileges(t, action);
  const facts = gatherFacts(t, o.root);
  const plan = action === 'install' ? installPlan(t, facts) : action === 'uninstall' ? uninstallPlan(t, facts) : controlPlan(t, action);
  if (action === 'status') for (const s of plan.steps) if (s.kind === 'run') s.mayFail = true;
  const out = (line: string) => process.stdout.write(line + '\n');
  const r = applyPlan(plan, { ...(o.dryRun ? { dryRun: true } : {}), ...(o.root ? { root: o.root } : {}), out });
  for (const n of plan.notes) out(`note: ${n}`);
  if (action === 'status' && r.status !== 0) {
    throw Object.assign(new DropwireError('DW_SERVICE_INACTIVE', `the service manager reports the service as not running (exit code ${r.status})`), { exitCode: r.status });
  }
}

function checkPrivileges(t: Target, action: Action): void {
  if (t.platform === 'win32' || action === 'status') return;
  const root = process.getuid?.() === 0;
  if (t.scope === 'system' && !root) throw new DropwireError('DW_NEED_ROOT', `${action} of a system service needs root: sudo dropwire service ${action}${t.role === 'relay' ? ' --relay' : ''}`);
  if (t.scope === 'user' && root && process.env.SUDO_USER) throw usage(`a --user service belongs to the desktop user: run \`dropwire service ${action} --user\` as ${process.env.SUDO_USER}, without sudo`);
}

function pick<T extends object, K extends keyof T>(o: T, keys: K[]): Pick<T, K> {
  const r = {} as Pick<T, K>;
  for (const k of keys) if (o[k] !== undefined) r[k] = o[k];
  return r;
}
