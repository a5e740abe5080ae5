/** `netmangle probe [--json]`: what this kernel supports, and how netmangle will attach here. */
import type { Command } from 'commander';
import { probeFeatures, type ProbeResult } from '../../kernel/probe.js';

export function formatProbe(result: ProbeResult): string {
  const rows: Array<[string, string]> = [['kernel', result.kernel]];
  for (const [name, ok] of Object.entries(result.features)) rows.push([name, ok ? 'yes' : 'no']);
  rows.push(['attach xdp', result.attach.xdp]);
  rows.push(['attach ingress', result.attach.ingress]);
  rows.push(['attach egress', result.attach.egress]);
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}

export function register(program: Command): void {
  program
    .command('probe')
    .description('probe the kernel for the eBPF features netmangle uses (needs root)')
    .option('--json', 'print the result as JSON')
    .action((opts: { json?: boolean }) => {
      const result = probeFeatures();
      const out = opts.json
        ? JSON.stringify({ kernel: result.kernel, features: result.features, attach: result.attach })
        : formatProbe(result);
      process.stdout.write(out + '\n');
    });
}
