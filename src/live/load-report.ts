/**
 * Loading a compiled program, and what the user is told when the kernel's verifier refuses it.
 * Two cases, told apart by the verifier's log:
 *
 * - a limit (more than 1,000,000 instructions processed, more than 8,192 branches pending):
 *   the rules are too many or too branchy for one program. Said as such, with about how many
 *   rules like these fit (measured on a prefix of the program), and no log file kept.
 * - anything else: a program netmangle generated and the verifier refused is netmangle's bug.
 *   The whole log is kept for the report, in a directory of its own only root can read.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CompiledProgram } from '../compiler/index.js';
import { verdicts } from '../compiler/layout.js';
import { ProgramRejectedError } from '../errors.js';
import { loadProgram, VerifierError, type BpfMap, type Program, type VerifierLimit } from '../kernel/index.js';
import { R0 } from '../bpf/opcodes.js';
import { BPF_ALU64, BPF_EXIT, BPF_JMP, BPF_K, BPF_MOV } from '../bpf/opcodes.js';

/** What the verifier processes at most per program (BPF_COMPLEXITY_LIMIT_INSNS). */
export const VERIFIER_INSN_LIMIT = 1_000_000;

export function loadWithReport(compiled: CompiledProgram, maps: Record<string, BpfMap>): Program {
  try {
    return loadProgram({ type: compiled.kind, insns: compiled.insns, maps, mapRefs: compiled.mapRefs, name: compiled.name });
  } catch (err) {
    if (!(err instanceof VerifierError)) throw err;
    if (err.limit) throw limitError(compiled, maps, err.limit, err);
    const file = keepVerifierLog(`${compiled.rules.map((r) => `# rule ${r.name}: ${r.text}`).join('\n')}\n\n${err.log}`);
    const tail = err.log.trim().split('\n').slice(-4).map((l) => `    ${l}`).join('\n');
    throw new ProgramRejectedError(
      `the kernel's verifier rejected the program for ${compiled.rules.map((r) => `"${r.text}"`).join(', ')} (a netmangle bug):\n${tail}`,
      err.log,
      { hint: `the whole verifier log is in ${file}; please report it with the rule`, cause: err },
    );
  }
}

/**
 * Writes a verifier log to a new directory (mode 0700) under the temporary directory, named
 * for netmangle, as a file only its owner can read (0600); returns the file's path.
 */
export function keepVerifierLog(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-verifier-'));
  const file = join(dir, 'verifier.log');
  writeFileSync(file, text, { mode: 0o600, flag: 'wx' });
  return file;
}

function limitError(compiled: CompiledProgram, maps: Record<string, BpfMap>, limit: VerifierLimit, cause: VerifierError): ProgramRejectedError {
  const n = compiled.rules.length;
  const what = n === 1 ? `the rule "${compiled.rules[0]!.text}"` : `${n} rules`;
  const where = `${compiled.hook}${compiled.dev ? ` of ${compiled.dev}` : ''}`;
  const cause_ = limit.kind === 'insns'
    ? `it would have to check more than ${VERIFIER_INSN_LIMIT.toLocaleString('en-US')} instructions`
    : 'it would have to keep more than 8,192 branches pending on one path';
  const fit = limit.kind === 'insns' ? rulesThatFit(compiled, maps) : undefined;
  const split = 'split the rules across hooks or interfaces (or into rules files run side by side), or merge rules that differ only in a value into one with FIELD in {…}';
  const hint = fit !== undefined && fit < n ? `about ${fit} rules like these fit in one program: ${split}` : split;
  return new ProgramRejectedError(
    `${what} at ${where} ${n === 1 ? 'makes' : 'make'} a program larger than the kernel's verifier checks: ${cause_} (verifier: "${limit.line}")`,
    cause.log,
    { hint, exitCode: 2, cause },
  );
}

/**
 * About how many of the program's rules fit under the verifier's instruction limit: a prefix
 * of the program (its first quarter of rules, each rule's code as it is, then the verdict of
 * a packet no rule matched) is loaded, and what the verifier processed for it is scaled. The
 * verifier's work grows about linearly with rules of one kind; the estimate counts the parser
 * as part of every rule, so it errs low. Undefined when it cannot be measured.
 */
function rulesThatFit(compiled: CompiledProgram, maps: Record<string, BpfMap>): number | undefined {
  const n = compiled.rules.length;
  const k = Math.floor(n / 4);
  const cut = compiled.labels?.get(`rule${k}`);
  if (k < 1 || cut === undefined) return undefined;
  const none = verdicts(compiled.kind).none;
  const insns = [
    ...compiled.insns.slice(0, cut),
    { code: BPF_ALU64 | BPF_MOV | BPF_K, dst: R0, src: 0, off: 0, imm: none },
    { code: BPF_JMP | BPF_EXIT, dst: 0, src: 0, off: 0, imm: 0 },
  ];
  try {
    using prog = loadProgram({ type: compiled.kind, insns, maps, mapRefs: compiled.mapRefs.filter((r) => r.index < cut), name: compiled.name });
    const processed = prog.info().verifiedInsns;
    if (!(processed > 0)) return undefined;
    return Math.max(1, Math.floor((VERIFIER_INSN_LIMIT * k) / processed));
  } catch {
    return undefined;
  }
}
