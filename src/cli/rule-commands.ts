import type { Command } from 'commander';

/** `dropwire rule …`, `printers`: declared here, features imported lazily. */
export function registerRuleCommands(_program: Command): void {}
