/**
 * `netmangle fields [PATTERN]`: the fields a rule can name, from the catalog (the same source
 * as docs/fields.md), with their type, whether `set` may write them and the hooks that see them.
 */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';

const HOOKS = ['xdp', 'ingress', 'egress'] as const;

export interface FieldRow {
  name: string;
  type: string;
  settable: boolean;
  hooks: string[];
  description: string;
}

/** PATTERN: a glob (`tcp.flags.*`) when it has `*` or `?`, else a part of the name; any case. */
function matcher(pattern: string | undefined): (name: string) => boolean {
  if (pattern === undefined) return () => true;
  const p = pattern.toLowerCase();
  if (!/[*?]/.test(p)) return (name) => name.includes(p);
  const re = new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  return (name) => re.test(name);
}

export async function fieldRows(pattern?: string): Promise<FieldRow[]> {
  const { fieldCatalog, hookCannotSee } = await import('../../rules/catalog.js');
  const wanted = matcher(pattern);
  return fieldCatalog.fields.filter((f) => wanted(f.name)).map((f) => ({
    name: f.name,
    type: f.kind === 'uint' ? `uint 0..${f.max}${f.scale === 1 ? '' : ` step ${f.scale}`}` : f.kind,
    settable: f.writable && !f.either,
    hooks: HOOKS.filter((h) => !hookCannotSee(f.layer, h)),
    description: f.description,
  }));
}

export function register(program: Command): void {
  program
    .command('fields')
    .description('list the fields a rule can name (Wireshark names): type, settable, hooks')
    .argument('[pattern]', "part of a name (ttl), or a glob (tcp.flags.*)")
    .option('--json', 'print as JSON')
    .action(async (pattern: string | undefined, opts: { json?: boolean }) => {
      const rows = await fieldRows(pattern);
      if (rows.length === 0) {
        const { nearestField } = await import('../../rules/catalog.js');
        const near = nearestField(pattern!);
        throw new UsageError(`no field matches ${JSON.stringify(pattern)}`, { hint: near ? `did you mean ${near}? (netmangle fields lists them all)` : 'netmangle fields lists them all' });
      }
      if (opts.json) {
        process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
        return;
      }
      const table = [['field', 'type', 'settable', 'hooks', 'description'], ...rows.map((r) => [r.name, r.type, r.settable ? 'yes' : 'no', r.hooks.join(','), r.description])];
      const widths = table[0]!.slice(0, -1).map((_, col) => Math.max(...table.map((r) => r[col]!.length)));
      for (const r of table) process.stdout.write(r.map((cell, col) => (col < widths.length ? cell.padEnd(widths[col]!) : cell)).join('  ').trimEnd() + '\n');
    });
}
