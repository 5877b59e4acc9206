/** `mailgate blocks ...`: see and lift the brute-force blocks the gateway set. */
import net from 'node:net';
import { Command } from 'commander';
import { clientKey } from '../../auth/client-key.js';
import { ErrorCodes, MailgateError } from '../../errors.js';
import { normaliseUsername } from '../../store/username.js';
import type { PenaltyState } from '../../store/types.js';
import { globalOptions, withStore } from '../context.js';
import { isoTime, printJson, printLine, printTable, shortTime } from '../output.js';

function toJson(state: PenaltyState) {
  return {
    kind: state.kind,
    key: state.key,
    failures: state.failures,
    lastFailure: isoTime(state.lastFailure),
    blockedUntil: isoTime(state.blockedUntil),
  };
}

/** The form the gateway stores: an IP as its client key (IPv6 as its /64), a user normalised. */
function keyFor(target: string): string {
  const trimmed = target.trim();
  if (net.isIP(trimmed)) return clientKey(trimmed);
  if (/^[0-9a-f:]+::\/64$/i.test(trimmed)) return trimmed.toLowerCase();
  return normaliseUsername(trimmed);
}

/**
 * What `blocks clear` is to clear: one target's key, or undefined for
 * everything. Everything takes --all --yes: a forgotten argument must not
 * hand every guesser a fresh budget.
 */
function clearTarget(target: string | undefined, opts: { all?: boolean; yes?: boolean }): string | undefined {
  if (target !== undefined && opts.all) throw new MailgateError(ErrorCodes.USAGE, 'give an IP address or user, or --all, not both');
  if (target !== undefined) return keyFor(target);
  if (!opts.all) throw new MailgateError(ErrorCodes.USAGE, 'give the IP address or user to clear, or --all --yes to clear every block and failure counter');
  if (!opts.yes) throw new MailgateError(ErrorCodes.USAGE, 'clearing every block and failure counter lifts them for every guesser too; add --yes to confirm');
  return undefined;
}

export function blocksCommand(): Command {
  const blocks = new Command('blocks').description('temporary blocks after repeated failed logins');

  blocks
    .command('list')
    .description('list the blocks in force (with --all, every failure counter)')
    .option('--all', 'also list clients and accounts with failures but no block')
    .option('--json', 'print JSON')
    .action((opts: { all?: boolean }, cmd: Command) =>
      withStore(cmd, async (store) => {
        const rows = (await (opts.all ? store.penalties.all() : store.penalties.activeBlocks())).map(toJson);
        if (globalOptions(cmd).json) return printJson(rows);
        if (rows.length === 0) return printLine(opts.all ? 'no failed logins on record' : 'no blocks in force');
        printTable(
          ['KIND', 'IP OR USER', 'FAILURES', 'LAST FAILURE', 'BLOCKED UNTIL'],
          rows.map((r) => [
            r.kind,
            r.key,
            String(r.failures),
            shortTime(r.lastFailure ? Date.parse(r.lastFailure) : null),
            r.blockedUntil ? shortTime(Date.parse(r.blockedUntil)) : '-',
          ]),
        );
      }),
    );

  blocks
    .command('clear')
    .description('lift the blocks and forget the failures of one IP or user, or of everyone with --all --yes')
    .argument('[target]', 'an IP address (IPv6: its /64) or a username')
    .option('--all', 'clear every block and failure counter')
    .option('--yes', 'confirm --all')
    .action((target: string | undefined, opts: { all?: boolean; yes?: boolean }, cmd: Command) => {
      const key = clearTarget(target, opts);
      return withStore(cmd, async (store) => {
        const removed = await store.penalties.clear(key);
        printLine(`cleared ${removed} record${removed === 1 ? '' : 's'}${key ? ` for ${key}` : ''}`);
      });
    });

  return blocks;
}
