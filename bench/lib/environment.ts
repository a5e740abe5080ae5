/**
 * What the report says about where it was measured, and installing the Debian packages the
 * bench needs (only those missing, through apt-get).
 */
import { spawnSync } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { readFileSync } from 'node:fs';
import { NetmangleError } from '../../src/errors.js';

/** Debian packages the bench runs tools from, with one executable each to check for. */
export const DEBIAN_PACKAGES: ReadonlyArray<readonly [pkg: string, exe: string]> = [
  ['clang', 'clang'],
  ['libbpf-dev', '/usr/include/bpf/bpf_helpers.h'],
  ['tcpreplay', 'tcprewrite'],
  ['iperf3', 'iperf3'],
  ['tcpdump', 'tcpdump'],
  ['bpftool', 'bpftool'],
  ['iproute2', 'tc'],
  ['iputils-ping', 'ping'],
  ['python3', 'python3'],
];

function sh(argv: string[]): { ok: boolean; out: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

function installed(pkg: string): boolean {
  const r = sh(['dpkg-query', '-W', '-f=${Status}', pkg]);
  return r.ok && /install ok installed/.test(r.out);
}

/** Installs whichever of the bench's Debian packages are missing; returns what it installed. */
export function installMissingPackages(log: (line: string) => void): string[] {
  const missing = DEBIAN_PACKAGES.map(([p]) => p).filter((p) => !installed(p));
  if (missing.length === 0) return [];
  log(`installing from Debian: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  let r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { encoding: 'utf8', env });
  if (r.status !== 0) {
    spawnSync('apt-get', ['update'], { encoding: 'utf8', env });
    r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { encoding: 'utf8', env });
  }
  if (r.status !== 0) {
    throw new NetmangleError(`could not install ${missing.join(', ')}: ${(r.stderr || '').trim().split('\n').pop()}`, {
      hint: `install them yourself: apt-get install -y ${missing.join(' ')}`,
    });
  }
  return missing;
}

function firstLine(argv: string[], pattern?: RegExp): string {
  const r = sh(argv);
  if (!r.out) return 'not found';
  const lines = r.out.split('\n');
  return (pattern ? lines.find((l) => pattern.test(l)) : lines[0])?.trim() ?? lines[0]!.trim();
}

function packageVersion(pkg: string): string {
  const r = sh(['dpkg-query', '-W', '-f=${Version}', pkg]);
  return r.ok ? r.out : 'not installed';
}

export interface Environment {
  rows: Array<[string, string]>;
}

export function describeEnvironment(): Environment {
  const cpuModel = cpus()[0]?.model ?? 'unknown';
  let os = 'unknown';
  try {
    os = /PRETTY_NAME="([^"]+)"/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? os;
  } catch {
    // not Linux as we know it
  }
  const rows: Array<[string, string]> = [
    ['date', new Date().toISOString()],
    ['machine', `${cpuModel}, ${cpus().length} CPUs, ${(totalmem() / 2 ** 30).toFixed(1)} GiB RAM`],
    ['operating system', os],
    ['kernel', firstLine(['uname', '-srvm'])],
    ['Node.js', process.version],
    ['clang', firstLine(['clang', '--version'])],
    ['libbpf-dev', packageVersion('libbpf-dev')],
    ['iproute2 (tc)', firstLine(['tc', '-V'])],
    ['bpftool', firstLine(['bpftool', 'version'])],
    ['tcprewrite', firstLine(['tcprewrite', '--version'], /tcprewrite version/)],
    ['iperf3', firstLine(['iperf3', '--version'])],
    ['tcpdump', firstLine(['tcpdump', '--version'])],
    ['BPF JIT', sh(['cat', '/proc/sys/net/core/bpf_jit_enable']).out === '1' ? 'on' : 'off or unknown'],
  ];
  return { rows };
}
