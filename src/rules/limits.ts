/**
 * The limits on what netmangle reads from users, in one place: the parser, the checker and the
 * rules-file loader enforce them before doing the work they bound, and docs/limits.md is
 * rendered from LIMITS (a test keeps the two equal).
 *
 * Why limits at all: the parser, checker, compiler and formatter walk rules recursively, so
 * depth must be bounded before the stack is; a name is compared with every field for a "did
 * you mean", so its length must be bounded before that; a rules file is read whole, so its
 * size must be bounded before it is read. Each bound is far above what a hand-written rule
 * needs and far below what breaks netmangle.
 */
import { UsageError } from '../errors.js';

/** Characters of one rule's text (the one-line form, or a rule rebuilt from a rules file). */
export const MAX_RULE_LENGTH = 16384;
/** How deep parentheses, `not` / `!` and function calls may nest in one rule. */
export const MAX_NESTING = 32;
/** Binary operators (and, or, arithmetic) in one rule: bounds how deep a chain's tree grows. */
export const MAX_OPERATORS = 256;
/** Values and ranges in one `in {…}` set. */
export const MAX_SET_MEMBERS = 1024;
/** Characters of a name: a field, a function, a rule's name, a key of a rules file. */
export const MAX_NAME_LENGTH = 64;
/** Rules in one rules file. */
export const MAX_RULES_PER_FILE = 4096;
/** Bytes of a rules file. */
export const MAX_FILE_BYTES = 1024 * 1024;
/** YAML aliases (`*name`) in one rules file. */
export const MAX_YAML_ALIASES = 100;
/** Nodes the aliases of a rules file may expand to altogether (yaml's maxAliasCount). */
export const MAX_ALIAS_EXPANSION = 1000;
/** The longest `delay` and `reorder … timeout` (a packet held longer is surely a mistake). */
export const MAX_DELAY_NS = 60_000_000_000;
/** `for:` and `start-after:` of a rule (kept by the program's own clock): at most a year. */
export const MAX_RULE_DURATION_NS = 365 * 86_400_000_000_000;
/** Characters of a user's text echoed back in a message (longer text is cut with "…"). */
export const MAX_ECHO = 60;

export interface LimitInfo {
  /** What is limited, as the docs name it. */
  what: string;
  value: number;
  unit: string;
  /** What happens when it is exceeded, or where it applies. */
  note: string;
}

/** The table docs/limits.md shows. */
export const LIMITS: readonly LimitInfo[] = [
  { what: 'rule text', value: MAX_RULE_LENGTH, unit: 'characters', note: 'one rule, the one-line form or a rule rebuilt from a rules file (match, set and action)' },
  { what: 'nesting depth', value: MAX_NESTING, unit: 'levels', note: 'parentheses, `not` / `!` and function calls inside one another' },
  { what: 'operators in a rule', value: MAX_OPERATORS, unit: 'operators', note: '`and`, `or` and arithmetic operators (`+ - * / % & \\| ^ << >>`) in one rule (in a rules file: in its match, and in each value)' },
  { what: 'set members', value: MAX_SET_MEMBERS, unit: 'members', note: 'values and `lo..hi` ranges in one `in {…}`' },
  { what: 'name length', value: MAX_NAME_LENGTH, unit: 'characters', note: 'field and function names in a rule, rule names (`--name`, `name:`)' },
  { what: 'rules per file', value: MAX_RULES_PER_FILE, unit: 'rules', note: 'entries under `rules:`' },
  { what: 'rules file size', value: MAX_FILE_BYTES, unit: 'bytes', note: 'read at most this many bytes (plus one) of any file, pipe or device' },
  { what: 'YAML aliases', value: MAX_YAML_ALIASES, unit: 'aliases', note: '`*name` references in one rules file' },
  { what: 'YAML alias expansion', value: MAX_ALIAS_EXPANSION, unit: 'nodes', note: 'nodes the aliases of one file stand for, altogether' },
  { what: 'delay', value: MAX_DELAY_NS / 1e9, unit: 'seconds', note: '`delay D` and `reorder … timeout D`' },
  { what: 'rule durations', value: MAX_RULE_DURATION_NS / 86_400e9, unit: 'days', note: '`for:` and `start-after:` of a rule in a rules file, `--start-after` of a one-line rule' },
];

/** `text` as a message shows it: at most MAX_ECHO characters, cut with "…" and its length. */
export function shorten(text: string, max = MAX_ECHO): string {
  if (text.length <= max) return text;
  return `${text.slice(0, max)}… (${text.length} characters)`;
}

/** A value as a message quotes it: JSON, shortened. */
export function shown(value: unknown): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch {
    json = undefined;
  }
  return shorten(json ?? String(value));
}

/** The one line a refusal prints: what, the value, the limit. */
export function overLimitMessage(what: string, value: number, limit: number, unit: string): string {
  return `${what} has ${value} ${unit}, more than the limit of ${limit} (docs/limits.md)`;
}

export function overLimit(what: string, value: number, limit: number, unit: string): UsageError {
  return new UsageError(overLimitMessage(what, value, limit, unit));
}

/** The Markdown of docs/limits.md. */
export function renderLimitsTable(): string {
  const rows = LIMITS.map((l) => `| ${l.what} | ${l.value} ${l.unit} | ${l.note} |`);
  return [
    '# Limits',
    '',
    'netmangle refuses input beyond these limits before it starts the work they bound, with one',
    'line that names the limit and the value given, and exit code 2. They are far above what a',
    'hand-written rule needs; they keep a mistaken or hostile input from exhausting the stack,',
    'the memory or the time of netmangle. The numbers live in `src/rules/limits.ts`; this page is',
    'rendered from it (`node dist/src/rules/limits.js > docs/limits.md`) and a test checks it.',
    '',
    '| Limit | Value | Applies to |',
    '|---|---|---|',
    ...rows,
    '',
    'Other bounds are given where the value is described: the values each action takes in',
    '[rules.md](rules.md), `--connections` of `--per-connection` rules there too, and the field',
    'ranges in [fields.md](fields.md).',
    '',
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) process.stdout.write(renderLimitsTable());
