import type { Command } from 'commander';

/** `dropwire service …`, `logs`, `status`: declared here, features imported lazily. */
export function registerServiceCommands(_program: Command): void {}
