/**
 * `netmangle guardian --owner PID:START` (hidden): started by a netmangle process before its
 * first netlink attachment, in a session of its own; waits for that process to exit and removes
 * what it left attached (see src/live/guardian.ts). Not meant to be run by hand.
 */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';

export function register(program: Command): void {
  program
    .command('guardian', { hidden: true })
    .description('watch a netmangle process and remove its netlink attachments when it dies')
    .requiredOption('--owner <pid:start>', 'the process to watch: pid and start time (clock ticks after boot)')
    .action(async (opts: { owner: string }) => {
      const m = /^(\d+):(\d+)$/.exec(opts.owner);
      if (!m) throw new UsageError(`--owner ${opts.owner}: expected PID:START`);
      const { guard } = await import('../../live/guardian.js');
      guard({ pid: Number(m[1]), startTime: Number(m[2]) });
    });
}
