import fs from 'node:fs';
import path from 'node:path';
import { cliOk, spawnCli, startRelay, tempDir, type Proc } from './cli.js';

/** A relay and enrolled hosts; `allow` maps a host to its send-to glob. */
export async function hosts(names: string[], o: { allow?: Record<string, string>; rules?: Record<string, unknown[]>; relayArgs?: string[] } = {}) {
  const dir = tempDir('dw-send-');
  const data = path.join(dir, 'relay');
  const relay = await startRelay(data, o.relayArgs);
  const homes: Record<string, string> = {};
  for (const name of names) {
    const glob = o.allow?.[name];
    const token = await cliOk(['relay', 'device', 'add', name, '--data', data, ...(glob ? ['--send-to', glob] : [])]);
    homes[name] = path.join(dir, name);
    await cliOk(['init', token, '--home', homes[name]!]);
    const rules = o.rules?.[name];
    if (rules) {
      const file = path.join(homes[name]!, 'config.json');
      const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      cfg.rules = rules;
      fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
    }
  }
  const agents: Record<string, Proc> = {};
  const start = async (name: string) => {
    const p = spawnCli(['agent', '--home', homes[name]!]);
    agents[name] = p;
    await p.waitLog((l) => l.msg === 'session started');
    return p;
  };
  return { dir, data, relay, homes, agents, start };
}

