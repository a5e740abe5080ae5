/**
 * `netmangle demo`: the first command of the README. Builds h1 ── sw ── h2, shows traffic
 * between the hosts, runs the article's two experiments before and after a netmangle rule,
 * prints a summary and takes everything down again.
 */
import type { Command } from 'commander';
import { Lab } from '../../lab/lab.js';
import { requireRoot } from '../../lab/run.js';
import { EXIT } from '../../errors.js';
import { ping, tcpTransfer, type PingResult, type TransferResult } from '../../lab/measure.js';
import { applyRule, ruleCommandAvailable, type AppliedRule, type ApplyRuleOptions, type Hook } from '../../lab/experiments.js';

export const TTL_RULE = 'icmp.type == 0 and ip.ttl > 0 => set ip.ttl = random(1, ip.ttl)';
export const PSH_RULE = 'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1';
export const PSH_PROBABILITY = 0.1;

const PING_COUNT = 10;
const TRANSFER_BYTES = 8_000_000;

export function register(program: Command): void {
  program
    .command('demo')
    .description("build h1 ── sw ── h2, run the article's two experiments before and after a rule, clean up")
    .option('--keep', 'leave the lab up afterwards (take it down with `netmangle lab down NAME`)')
    .action(async (opts: { keep?: boolean }) => {
      await runDemo({ keep: opts.keep ?? false, out: (s) => process.stdout.write(s) });
    });
}

interface DemoOptions {
  keep: boolean;
  out: (text: string) => void;
}

function ttlSummary(p: PingResult | undefined): string {
  if (!p) return '-';
  if (p.ttls.length === 0) return `no replies (${p.sent} sent)`;
  const distinct = new Set(p.ttls);
  if (distinct.size === 1) return `${p.ttls[0]} (all ${p.ttls.length})`;
  return `${Math.min(...p.ttls)}..${Math.max(...p.ttls)}, ${distinct.size} distinct of ${p.ttls.length}`;
}

function pshSummary(t: TransferResult | undefined): string {
  if (!t) return '-';
  return `${(t.pshShare * 100).toFixed(1)}% (${t.pshSegments}/${t.dataSegments})`;
}

function rate(bitsPerSecond: number): string {
  return bitsPerSecond >= 1e9 ? `${(bitsPerSecond / 1e9).toFixed(1)} Gbit/s` : `${(bitsPerSecond / 1e6).toFixed(0)} Mbit/s`;
}

/** Runs `measure` with the rule on, always detaches, and returns what `run` counted too. */
async function withRule<T>(
  lab: Lab,
  host: string,
  hook: Hook,
  rule: string,
  opts: ApplyRuleOptions,
  measure: () => Promise<T>,
): Promise<{ result: T; counters: Record<string, number> }> {
  const applied: AppliedRule = await applyRule(lab, host, 'eth0', hook, rule, opts);
  let result: T;
  try {
    result = await measure();
  } finally {
    await applied.detach();
  }
  // `run` prints its totals as it detaches.
  return { result, counters: await applied.counters() };
}

function countersLine(c: Record<string, number>): string {
  const parts = Object.entries(c).map(([k, v]) => `${k}=${v}`);
  return parts.length ? `  rule counters: ${parts.join(' ')}\n` : '';
}

export async function runDemo(opts: DemoOptions): Promise<void> {
  requireRoot('netmangle demo');
  const { out } = opts;
  const started = Date.now();
  const name = `demo${process.pid.toString(36)}`;
  out("netmangle demo: a lab h1 ── sw ── h2, traffic between the hosts, then the article's two experiments.\n\n");

  const lab = await Lab.up(undefined, { name });
  // Ctrl-C must not leave the lab behind.
  const onSignal = (signal: NodeJS.Signals) => {
    void lab.down().finally(() => process.exit(signal === 'SIGTERM' ? EXIT.sigterm : EXIT.sigint));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const [h1, h2] = ['h1', 'h2'];
    out(`lab "${name}": ${h1} ${lab.address(h1, 4)} ${lab.address(h1, 6)} ── sw (bridge) ── ${h2} ${lab.address(h2, 4)} ${lab.address(h2, 6)}\n\n`);

    out(`traffic ${h1} → ${h2}\n`);
    for (const family of [4, 6] as const) {
      const p = await ping(lab, h1, lab.address(h2, family), { count: 3, intervalS: 0.1 });
      const rtts = p.replies.map((r) => r.rttMs.toFixed(3)).join(' ');
      out(`  ping ${p.target.padEnd(13)} ${p.received}/${p.sent} replies, rtt ${rtts || '-'} ms\n`);
    }

    const canRun = await ruleCommandAvailable();
    const missing = 'needs `netmangle run`';

    out(`\nexperiment 1: TTL of ping replies, XDP rule on ${h1}'s eth0 (ingress)\n  rule: ${TTL_RULE}\n`);
    const ttlBefore = await ping(lab, h1, h2, { count: PING_COUNT });
    out(`  before: ttl ${ttlBefore.ttls.join(' ') || '(no replies)'}\n`);
    let ttlAfter: PingResult | undefined;
    if (canRun) {
      const applied = await withRule(lab, h1, 'xdp', TTL_RULE, {}, () => ping(lab, h1, h2, { count: PING_COUNT }));
      ttlAfter = applied.result;
      out(`  after:  ttl ${ttlAfter.ttls.join(' ') || '(no replies)'}\n`);
      out(countersLine(applied.counters));
    } else out(`  after:  not measured: ${missing}, which this build does not have yet\n`);

    out(`\nexperiment 2: PSH among TCP data segments as ${h2} receives them, tc egress rule on ${h1}'s eth0\n`);
    out(`  rule: ${PSH_RULE}  (probability ${PSH_PROBABILITY})\n`);
    // One packet per segment at the hook, before and after alike, so the two are comparable.
    await lab.exec(h1, ['ip', 'link', 'set', 'dev', 'eth0', 'gso_max_segs', '1'], { check: true });
    const pshBefore = await tcpTransfer(lab, h1, h2, { bytes: TRANSFER_BYTES });
    out(`  before: ${pshSummary(pshBefore)} PSH, ${(pshBefore.payloadBytes / 1e6).toFixed(1)} MB at ${rate(pshBefore.bitsPerSecond)}${dropNote(pshBefore)}\n`);
    let pshAfter: TransferResult | undefined;
    if (canRun) {
      const applied = await withRule(lab, h1, 'egress', PSH_RULE, { probability: PSH_PROBABILITY, perSegment: true }, () =>
        tcpTransfer(lab, h1, h2, { bytes: TRANSFER_BYTES }),
      );
      pshAfter = applied.result;
      out(`  after:  ${pshSummary(pshAfter)} PSH, ${(pshAfter.payloadBytes / 1e6).toFixed(1)} MB at ${rate(pshAfter.bitsPerSecond)}${dropNote(pshAfter)}\n`);
      out(countersLine(applied.counters));
    } else out(`  after:  not measured: ${missing}, which this build does not have yet\n`);

    const rows: Array<[string, string, string]> = [
      ['', 'before', 'after'],
      ['TTL of ping replies at h1', ttlSummary(ttlBefore), canRun ? ttlSummary(ttlAfter) : missing],
      ['PSH among data segments at h2', pshSummary(pshBefore), canRun ? pshSummary(pshAfter) : missing],
    ];
    const w0 = Math.max(...rows.map((r) => r[0].length));
    const w1 = Math.max(...rows.map((r) => r[1].length));
    out('\nsummary\n');
    for (const [a, b, c] of rows) out(`  ${a.padEnd(w0)}   ${b.padEnd(w1)}   ${c}\n`);
    if (!canRun) out('\nThe rule experiments need `netmangle run`, which this build does not have yet; only the baselines were measured.\n');
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (opts.keep) out(`\nlab "${name}" left up: netmangle lab down ${name}\n`);
    else await lab.down();
  }
  out(`\ndone in ${((Date.now() - started) / 1000).toFixed(1)} s${opts.keep ? '' : ', lab removed'}\n`);
}

function dropNote(t: TransferResult): string {
  return t.captureDropped > 0 ? ` (capture missed ${t.captureDropped} packets)` : '';
}
