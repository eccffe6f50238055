import { Option, type Command } from 'commander';

/** `dropwire relay message cancel|retry ID`: the HTTP API's cancel and retry, for the operator on the relay host. */
export function registerRelayMessageCommands(relay: Command): void {
  const message = relay.command('message').description('one message on this relay: cancel it, or queue it again');
  const dataOpt = () => new Option('--data <dir>', 'relay data folder').default('./dropwire-relay');
  message
    .command('cancel <id>')
    .description('cancel a message the host does not have yet (DW_TOO_LATE once it may have it)')
    .addOption(dataOpt())
    .option('--json', 'JSON output')
    .action(async (id: string, o: { data: string; json?: boolean }) => {
      const { messageCommand } = await import('../relay/message-command.js');
      const r = await messageCommand(o.data, 'cancel', id);
      console.log(o.json ? JSON.stringify(r) : `${r.id}\t${r.status}`);
    });
  message
    .command('retry <id>')
    .description('queue a failed, rejected or expired message again, as a new message linked to the old one')
    .addOption(dataOpt())
    .option('--json', 'JSON output')
    .action(async (id: string, o: { data: string; json?: boolean }) => {
      const { messageCommand } = await import('../relay/message-command.js');
      const r = await messageCommand(o.data, 'retry', id);
      console.log(o.json ? JSON.stringify(r) : `${r.id}\t${r.status}\tretry of ${r.retryOf}`);
    });
}
