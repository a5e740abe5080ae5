/** `netmangle status` and `netmangle clear`: what netmangle has attached, and removing pinned rules. */
import type { Command } from 'commander';
import { printable, printableJson } from '../../printable.js';

export function register(program: Command): void {
  program
    .command('status')
    .description('list the rules netmangle has attached (pinned, and running in the foreground), with counters')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }) => {
      const { listAttached } = await import('../../live/registry.js');
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
        const who = e.kind === 'pinned' ? `pinned at ${e.pinDir}` : `run by pid ${e.pid}`;
        process.stdout.write(`${printable(`${e.dev} ${e.hook}${e.netns ? ` (netns ${e.netns})` : ''} via ${e.path}, program id ${e.progId}, seed ${e.seed}, ${who}, since ${e.since}`)}\n`);
        e.rules.forEach((r, i) => {
          const c = e.counters?.rules[i];
          const counts = c ? `matched=${c.matched} acted=${c.acted} dropped=${c.dropped}` : 'counters unavailable';
          process.stdout.write(`  ${printable(`${r.name}: ${r.text}`)}\n    ${counts}\n`);
        });
        if (e.delay) process.stdout.write(`  delay line: ${formatDelayStats(e.delay)} (at ${printable(e.delayAt ?? '?')})\n`);
      }
    });
  program
    .command('clear')
    .description('detach and remove rules pinned by netmangle run --pin')
    .option('--dev <dev>', 'only those on this interface')
    .option('--netns <name>', 'only those in this network namespace')
    .action(async (opts: { dev?: string; netns?: string }) => {
      const { clearPinned } = await import('../../live/registry.js');
      const removed = clearPinned(opts);
      if (removed.length === 0) process.stdout.write('nothing pinned by netmangle matched\n');
      for (const r of removed) process.stdout.write(`${printable(`removed ${r.rules.length} rule${r.rules.length === 1 ? '' : 's'} from ${r.dev} ${r.hook}${r.netns ? ` (netns ${r.netns})` : ''}`)}\n`);
    });
}
