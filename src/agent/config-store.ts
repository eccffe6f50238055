import Conf from 'conf';
import { DropwireError } from '../shared/errors.js';
import { paths } from './config.js';

/**
 * The config file for writing, through `conf` (atomic writes; an unreadable file is never cleared). Only the
 * CLI writes (init, rule …); the agent reads with `loadAgentConfig` and does not load `conf` at all.
 */
export function openConfigStore(home: string): Conf<Record<string, unknown>> {
  try {
    return new Conf<Record<string, unknown>>({ cwd: home, configName: 'config', clearInvalidConfig: false, configFileMode: 0o600 });
  } catch (err) {
    throw new DropwireError('DW_BAD_CONFIG', `${paths(home).config}: not valid JSON (${(err as Error).message}); the file was left as it is`, { cause: err });
  }
}
