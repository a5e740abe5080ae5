/**
 * GET /metrics: the faults' counters in Prometheus's text format (version 0.0.4), one series
 * per fault and rule, so a dashboard or a test can watch a fault act while traffic runs.
 */
import type { FaultJson } from './schemas.js';

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** A label value with Prometheus's escapes (backslash, double quote, newline). */
function label(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function labels(pairs: Record<string, string | undefined>): string {
  const parts = Object.entries(pairs).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}="${label(v!)}"`);
  return `{${parts.join(',')}}`;
}

const RULE_SERIES = [
  ['matched', 'counter', 'Packets that matched the rule.'],
  ['acted', 'counter', "Times the rule's actions ran (matching packets its triggers let through)."],
  ['dropped', 'counter', 'Packets the rule dropped.'],
  ['held', 'gauge', "Packets the fault's delay line holds now (rules that delay or reorder)."],
] as const;

export function renderMetrics(faults: FaultJson[]): string {
  const out: string[] = [];
  out.push('# HELP netmangle_faults Faults this service has attached.', '# TYPE netmangle_faults gauge', `netmangle_faults ${faults.length}`);
  for (const [what, type, help] of RULE_SERIES) {
    const name = type === 'counter' ? `netmangle_rule_${what}_total` : `netmangle_rule_${what}`;
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const f of faults) {
      for (const r of f.counters?.rules ?? []) {
        out.push(`${name}${labels({ fault: f.name, rule: r.name, dev: r.dev, hook: r.hook, netns: r.netns })} ${r[what]}`);
      }
    }
  }
  const leased = faults.filter((f) => f.expiresAt !== undefined);
  out.push('# HELP netmangle_fault_expiry_timestamp_seconds When a fault with a ttl detaches unless renewed.', '# TYPE netmangle_fault_expiry_timestamp_seconds gauge');
  for (const f of leased) out.push(`netmangle_fault_expiry_timestamp_seconds${labels({ fault: f.name })} ${Date.parse(f.expiresAt!) / 1000}`);
  return out.join('\n') + '\n';
}
