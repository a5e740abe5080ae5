/** `netmangle status` and `netmangle clear`: what netmangle has attached, and removing pinned rules. */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { printable, printableJson } from '../../printable.js';

export function register(program: Command): void {
  program
    .command('status')
    .description('list the rules netmangle has attached (pinned, and running in the foreground), with counters')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }) => {
      const { listAttached } = await import('../../live/registry.js');
      const { clearCommandFor } = await import('../../live/guardian.js');
      const { formatDelayStats } = await import('../../delay/stats.js');
      const entries = listAttached();
      if (opts.json) {
        process.stdout.write(printableJson(JSON.stringify(entries, null, 2)) + '\n');
        return;
      }
      if (entries.length === 0) {
        process.stdout.write('nothing attached by netmangle\n');
        return;
      }
      for (const e of entries) {
        const who = e.kind === 'pinned' ? `pinned at ${e.pinDir}`
          : e.kind === 'orphan' ? `ORPHAN: owner ${e.pid} is gone and so is its guardian, the program ${e.state === 'unreachable' ? 'may still act (its namespace has no name this process can reach)' : 'still acts'}`
            : `run by pid ${e.pid}`;
        process.stdout.write(`${printable(`${e.dev} ${e.hook}${e.netns ? ` (netns ${e.netns})` : ''} via ${e.path}, program id ${e.progId}${e.kind === 'orphan' ? '' : `, seed ${e.seed}`}, ${who}, since ${e.since}`)}\n`);
        if (e.kind === 'orphan') {
          process.stdout.write(`  remove it with: ${printable(clearCommandFor(e))}\n`);
        }
        e.rules.forEach((r, i) => {
          const c = e.counters?.rules[i];
          const counts = c ? `matched=${c.matched} acted=${c.acted} dropped=${c.dropped}` : 'counters unavailable';
          process.stdout.write(`  ${printable(`${r.name}: ${r.text}`)}\n${e.kind === 'orphan' ? '' : `    ${counts}\n`}`);
        });
        if (e.delay) process.stdout.write(`  delay line: ${formatDelayStats(e.delay)} (at ${printable(e.delayAt ?? '?')})\n`);
      }
    });
  program
    .command('clear')
    .description('detach and remove rules pinned by netmangle run --pin, and what a dead netmangle left attached (status lists it as ORPHAN)')
    .option('--dev <dev>', 'only those on this interface')
    .option('--netns <name>', 'only those in this network namespace')
    .option('--hook <hook>', 'only those at this hook (xdp, ingress or egress)')
    .action(async (opts: { dev?: string; netns?: string; hook?: string }) => {
      if (opts.hook !== undefined && !['xdp', 'ingress', 'egress'].includes(opts.hook)) {
        throw new UsageError(`--hook ${opts.hook}: must be xdp, ingress or egress`);
      }
      const { clearPinned, clearOrphaned } = await import('../../live/registry.js');
      const removed = clearPinned(opts);
      const orphans = clearOrphaned(opts);
      if (removed.length === 0 && orphans.length === 0) process.stdout.write('nothing pinned or left behind by netmangle matched\n');
      for (const r of removed) process.stdout.write(`${printable(`removed ${r.rules.length} rule${r.rules.length === 1 ? '' : 's'} from ${r.dev} ${r.hook}${r.netns ? ` (netns ${r.netns})` : ''}`)}\n`);
      for (const o of orphans) process.stdout.write(`${printable(`removed program id ${o.progId} from ${o.dev} ${o.hook}${o.netns ? ` (netns ${o.netns})` : ''}, left by netmangle ${o.pid} (gone)`)}\n`);
    });
}
