/**
 * `netmangle build RULES -o OUT.o`: the compiled rules as an ELF object for the standard tools
 * (`ip link … xdp object`, `tc filter … bpf da obj`, `bpftool prog load`), or with `--emit c`
 * the same programs as C for clang, or with `--emit asm` their disassembly.
 */
import { printable } from '../../printable.js';
import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { fsUsageError, UsageError } from '../../errors.js';
import { addTriggerOptions, applyForOption, readRules, type RuleSourceOptions } from './run.js';

interface BuildCliOptions extends RuleSourceOptions {
  output?: string;
  emit: string;
  sections: string;
  for?: string;
}

export function register(program: Command): void {
  const cmd = program
    .command('build')
    .description('compile rules to an ELF object (or C source, or assembly) for clang, iproute2 and bpftool')
    .argument('<rule>', "a one-line rule 'MATCH => ACTION[, ACTION]...' or a rules file (.yaml)")
    .option('-o, --output <file>', 'where to write (required for --emit obj; default stdout for c and asm)')
    .option('--emit <what>', 'obj (ELF object, default), c (C source for clang -O2 -target bpf) or asm (disassembly)', 'obj')
    .option('--sections <style>', 'tc (default: tc programs in section "tc", for libbpf 1.1) or tcx ("tcx/ingress", "tcx/egress", libbpf 1.3+)', 'tc')
    .option('--dev <dev>', 'interface the rule is meant for (one-line rule; names programs when one hook repeats)')
    .option('--hook <hook>', 'xdp, ingress or egress (one-line rule)')
    .option('--probability <p>', 'act on a matching packet with this probability (0 < p <= 1, or a percentage: 5%)')
    .option('--every <n>', 'act on the Nth, 2Nth ... matching packet');
  addTriggerOptions(cmd)
    .option('--for <duration>', 'stop acting this long after the rule\'s first matching packet (kept by the program)')
    .option('--seed <n>', 'seed of the random decisions, stored in the object (default: chosen and printed)')
    .option('--name <name>', 'name of the one-line rule')
    .option('--checksum <mode>', 'fix (default) or keep: leave checksums stale on purpose')
    .action(async (rule: string, opts: BuildCliOptions) => {
      if (!['obj', 'c', 'asm'].includes(opts.emit)) throw new UsageError(`--emit ${opts.emit}: must be obj, c or asm`);
      if (!['tc', 'tcx'].includes(opts.sections)) throw new UsageError(`--sections ${opts.sections}: must be tc or tcx`);
      if (opts.emit === 'obj' && !opts.output) throw new UsageError('an object needs -o FILE (it is binary)', { hint: 'or use --emit c / --emit asm to print text' });
      const isOneLine = rule.includes('=>');
      const { groups, seed, seedChosen } = await readRules(rule, { ...opts, dev: opts.dev ?? (isOneLine ? 'any' : undefined) });
      applyForOption(groups, opts.for);
      const { buildObjectFromGroups } = await import('../../elf/build.js');
      const built = buildObjectFromGroups(groups, seed, { sections: opts.sections as 'tc' | 'tcx' });
      let text: string | undefined;
      if (opts.emit === 'c') {
        const { emitC } = await import('../../elf/c.js');
        text = emitC(built, { file: opts.output });
      } else if (opts.emit === 'asm') {
        const { objectListing } = await import('../../elf/listing.js');
        text = objectListing(built);
      }
      if (text !== undefined && !opts.output) {
        // C or assembly quoting the rules' text: a terminal shows it, never acts on it.
        process.stdout.write(process.stdout.isTTY ? printable(text, { multiline: true }) : text);
        return;
      }
      try {
        writeFileSync(opts.output!, text ?? built.bytes);
      } catch (err) {
        throw fsUsageError(err, `write ${opts.output}`);
      }
      const what = built.programs.map((p) => `${p.symbol} (section ${p.section})`).join(', ');
      process.stderr.write(`${printable(`wrote ${opts.output}: ${what}`)}; seed ${seed}${seedChosen ? ' (chosen at random; pass --seed to repeat)' : ''}\n`);
      const { connectionMemoryNote } = await import('../../compiler/index.js');
      for (const p of built.programs) {
        const note = connectionMemoryNote(p.compiled);
        if (note) process.stderr.write(`note: when loaded, ${note}\n`);
      }
    });
}
