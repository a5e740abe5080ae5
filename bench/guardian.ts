/**
 * What crash safety costs and how fast it is, on the netlink paths (issue 17):
 *
 *   node dist/bench/guardian.js [--rounds N]
 *
 * For each hook (ingress, egress, xdp) with `run --attach netlink`, N rounds of: start run, wait
 * for its "attached" line, kill -9, then poll the hook through netlink every millisecond until
 * the program is gone (the guardian's work). Also the time from start to "attached" with the
 * guardian and without it (NETMANGLE_UNGUARDED=1, for this measurement only), alternating, so
 * that load from elsewhere on the machine falls on both alike. Needs root; works in namespaces it
 * makes and removes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inNetns } from '../src/kernel/netns.js';
import { ifindexByName } from '../src/kernel/iface.js';
import { listClsBpfFilters, xdpQueryNetlink } from '../src/kernel/rtnetlink.js';
import { makeVethLab } from '../test/kernel/netlink-lab.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'netmangle');
const rounds = Number(process.argv[process.argv.indexOf('--rounds') + 1]) || 10;
type Hook = 'xdp' | 'ingress' | 'egress';

function start(args: string[], env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; ms: number }> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [bin, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      if (/^attached/m.test(out)) resolve({ child, ms: performance.now() - t0 });
    });
    child.on('close', (code) => reject(new Error(`run exited ${code}: ${out}`)));
  });
}

const exited = (c: ChildProcess) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.on('close', () => r())));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (xs: number[]) => `median ${median(xs).toFixed(1)} ms, min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)} (n=${xs.length})`;

async function main(): Promise<void> {
  const lab = makeVethLab();
  try {
    const ifindex = ifindexByName(lab.devA, lab.nsA);
    const present = (hook: Hook): boolean => inNetns(lab.nsA, () => hook === 'xdp'
      ? xdpQueryNetlink(ifindex).attached !== 'none'
      : listClsBpfFilters(ifindex, hook).length > 0);
    const startup: Record<'guarded' | 'unguarded', number[]> = { guarded: [], unguarded: [] };
    for (const hook of ['ingress', 'egress', 'xdp'] as const) {
      const clean: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const args = ['--netns', lab.nsA, '--dev', lab.devA, '--hook', hook, '--attach', 'netlink', 'icmp.type == 0 => set ip.ttl = 7'];
        const bare = await start(args, { NETMANGLE_UNGUARDED: '1' });
        startup.unguarded.push(bare.ms);
        bare.child.kill('SIGINT');
        await exited(bare.child);
        const run = await start(args, {});
        startup.guarded.push(run.ms);
        await new Promise((r) => setTimeout(r, 300));
        run.child.kill('SIGKILL');
        const t0 = performance.now();
        while (present(hook)) {
          if (performance.now() - t0 > 5000) throw new Error(`${hook}: still attached 5 s after kill -9`);
          await new Promise((r) => setTimeout(r, 1));
        }
        clean.push(performance.now() - t0);
        await exited(run.child);
      }
      process.stdout.write(`${hook}: kill -9 to program gone: ${fmt(clean)}\n`);
    }
    process.stdout.write(`run --attach netlink, start to "attached": with guardian ${fmt(startup.guarded)}; without ${fmt(startup.unguarded)}\n`);
  } finally {
    lab.cleanup();
  }
}

await main();
