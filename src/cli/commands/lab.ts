/**
 * `netmangle lab up|down|ls|exec`: test networks of namespaces, veth pairs and a bridge, from a
 * topology file or the built-in h1 ── sw ── h2.
 */
import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { printable } from '../../printable.js';
import { DEFAULT_LAB_NAME, Lab } from '../../lab/lab.js';
import { listNamespaces, requireRoot, run, signalExitCode } from '../../lab/run.js';
import { labOfNamespace, processAlive, readState } from '../../lab/state.js';

export function register(program: Command): void {
  const lab = program
    .command('lab')
    .description('build test networks (namespaces, veth pairs, a bridge) to try rules on');

  lab
    .command('up')
    .description('build a lab from a topology file, or h1 ── sw ── h2 without one')
    .argument('[file]', 'topology YAML (see docs/lab.md)')
    .option('-n, --name <name>', `lab name (default: the file's name: field, else "${DEFAULT_LAB_NAME}" if free, else ${DEFAULT_LAB_NAME}2, ${DEFAULT_LAB_NAME}3 …)`)
    .option('-v, --verbose', 'print each step')
    .action(async (file: string | undefined, opts: { name?: string; verbose?: boolean }) => {
      const built = await Lab.up(file, {
        name: opts.name,
        onStep: opts.verbose ? (s) => process.stdout.write(`  ${printable(s)}\n`) : undefined,
      });
      process.stdout.write(`lab "${printable(built.name)}" is up\n`);
      if (opts.name === undefined && built.plan.name === undefined && built.name !== DEFAULT_LAB_NAME) {
        process.stdout.write(`(a lab "${DEFAULT_LAB_NAME}" exists already, so this one is "${built.name}": its hosts are nm-${built.name}-HOST; give --name ${built.name} to the other lab commands)\n`);
      }
      process.stdout.write(await describeLab(built.name));
      const first = built.hosts[0];
      const second = built.hosts[1];
      if (first && second) {
        const flag = built.name === DEFAULT_LAB_NAME ? '' : ` --name ${built.name}`;
        process.stdout.write(`${printable(`try: netmangle lab exec${flag} ${first} -- ping -c 1 ${addressOr(built, second)}`)}\n`);
      }
    });

  lab
    .command('down')
    .description('remove a lab netmangle built: its namespaces, interfaces, bridge and record')
    .argument('[name]', 'lab name (default: the one lab you built, when there is exactly one)')
    .option('-a, --all', 'remove every lab netmangle recorded, listing each')
    .action(async (name: string | undefined, opts: { all?: boolean }) => {
      requireRoot('lab down');
      if (opts.all && name !== undefined) throw new UsageError('lab down: give a name or --all, not both');
      let names: string[];
      if (opts.all) {
        names = Lab.recorded().map((l) => l.name);
        if (names.length === 0) {
          process.stdout.write('no labs recorded by netmangle\n');
          return;
        }
      } else if (name !== undefined) {
        names = [name];
      } else {
        names = Lab.mine();
        const others = Lab.recorded().map((l) => l.name).filter((n) => !names.includes(n));
        if (names.length === 0) {
          process.stdout.write(`no lab of yours to remove${others.length ? ` (other labs: ${others.join(', ')}; name one to remove it: netmangle lab down NAME)` : ''}\n`);
          return;
        }
        if (names.length > 1) {
          throw new UsageError(`you have ${names.length} labs (${names.join(', ')}): say which`, { hint: `netmangle lab down ${names[0]}, or all of them: netmangle lab down --all` });
        }
      }
      for (const n of names) {
        const removed = await Lab.down(n);
        process.stdout.write(`${printable(removed.length ? `lab "${n}" removed (${removed.join(', ')})` : `lab "${n}": nothing left to remove`)}\n`);
      }
    });

  lab
    .command('ls')
    .description('list labs with their hosts, interfaces and addresses')
    .argument('[name]', 'only this lab')
    .action(async (name: string | undefined) => {
      requireRoot('lab ls');
      const names = name ? [name] : await Lab.list();
      if (names.length === 0) {
        process.stdout.write('no labs (start one with `netmangle lab up`)\n');
        return;
      }
      for (const n of names) process.stdout.write(await describeLab(n));
    });

  lab
    .command('exec')
    .description("run a command in a lab host's namespace; exits with the command's exit code")
    .argument('<host>', 'host name (h1, h2, … or the switch)')
    .argument('<command...>', 'the command and its arguments, after -- (lab exec h1 -- ping -c 1 198.18.0.2)')
    .option('-n, --name <name>', `lab name (default: the one lab you built, else "${DEFAULT_LAB_NAME}")`)
    // Options after the host belong to the command (`lab exec h1 ping -c 1 …` works without --).
    .passThroughOptions()
    .action(async (host: string, command: string[], opts: { name?: string }) => {
      requireRoot('lab exec');
      if (command[0] === '--') command = command.slice(1);
      if (command.length === 0) throw new UsageError('lab exec: no command given', { hint: 'netmangle lab exec h1 -- ping -c 1 198.18.0.2' });
      const mine = Lab.mine();
      const opened = Lab.open(opts.name ?? (mine.length === 1 ? mine[0] : DEFAULT_LAB_NAME));
      const ns = opened.netns(host);
      const code = await new Promise<number>((resolve, reject) => {
        const child = spawn('ip', ['netns', 'exec', ns, ...command], { stdio: 'inherit' });
        child.on('error', (err) => reject(new UsageError(`cannot run ${command[0]}: ${err.message}`)));
        child.on('close', (c, signal) => resolve(c ?? signalExitCode(signal)));
      });
      process.exitCode = code;
    });
}

function addressOr(lab: Lab, host: string): string {
  try {
    return lab.address(host, 4);
  } catch {
    return host;
  }
}

interface IpAddrEntry {
  ifname: string;
  mtu?: number;
  operstate?: string;
  master?: string;
  link_type?: string;
  addr_info?: Array<{ family: string; local: string; prefixlen: number; scope: string }>;
}

/** A lab as it is now (asked of the kernel, not of the record), as printable lines. */
async function describeLab(name: string): Promise<string> {
  const state = readState(name);
  const live = (await listNamespaces()).filter((ns) => labOfNamespace(ns) === name);
  const lines: string[] = [];
  const status = !state
    ? 'no record (leftovers: run `netmangle lab down ' + name + '`)'
    : state.status === 'up'
      ? 'up'
      : processAlive(state.pid)
        ? `building (pid ${state.pid})`
        : `half-built: its builder (pid ${state.pid}) is gone; run \`netmangle lab down ${name}\``;
  lines.push(`${name}: ${status}`);
  const namespaces = state ? state.namespaces : live;
  const switchName = state?.plan.switch;
  for (const ns of namespaces) {
    const node = ns.slice(`nm-${name}-`.length);
    const role = node === switchName ? 'switch' : 'host';
    if (!live.includes(ns)) {
      lines.push(`  ${node.padEnd(6)} ${role.padEnd(6)} ${ns}  (missing)`);
      continue;
    }
    lines.push(`  ${node.padEnd(6)} ${role.padEnd(6)} ${ns}`);
    const r = await run(['ip', '-n', ns, '-j', 'addr', 'show']);
    let entries: IpAddrEntry[] = [];
    try {
      entries = JSON.parse(r.stdout) as IpAddrEntry[];
    } catch {
      lines.push('      (cannot read interfaces)');
    }
    for (const e of entries) {
      if (e.ifname === 'lo') continue;
      const addrs = (e.addr_info ?? []).filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`);
      const extra = e.master ? `port of ${e.master}` : addrs.join(' ');
      lines.push(`      ${e.ifname.padEnd(8)} mtu ${String(e.mtu ?? '?').padEnd(5)} ${(e.operstate ?? '').padEnd(7)} ${extra}`);
    }
  }
  return lines.map((l) => printable(l)).join('\n') + '\n';
}

