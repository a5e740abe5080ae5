/**
 * `netmangle load OBJ.o --dev D --hook H`: load one program of a BPF object (clang's or
 * netmangle build's) and attach it, in the foreground like `netmangle run`: the first stdout
 * line starts with "attached"; SIGINT, SIGTERM, SIGHUP or --for detach it and exit.
 */
import type { Command } from 'commander';
import { NetmangleError, UsageError, describeError } from '../../errors.js';
import { parseDuration, setLongTimeout } from '../duration.js';
import { printable } from '../../printable.js';
import { parsePriority } from '../priority.js';

interface LoadCliOptions {
  dev?: string;
  hook?: string;
  section?: string;
  netns?: string;
  for?: string;
  attach: string;
  priority?: string;
}

export function register(program: Command): void {
  program
    .command('load')
    .description('load a program from a BPF object file (e.g. built by clang), attach it, detach on exit')
    .argument('<object>', 'ELF object file (clang -O2 -g -target bpf -c, or netmangle build)')
    .requiredOption('--dev <dev>', 'interface to attach to')
    .requiredOption('--hook <hook>', 'xdp, ingress or egress')
    .option('--section <name>', 'program to load: a section name or a function name (needed when several fit the hook)')
    .option('--netns <name>', 'network namespace of the interface: a name as ip netns lists it, or a path such as /proc/PID/ns/net')
    .option('--for <duration>', 'detach after this long (e.g. 30s, 5m)')
    .option('--attach <path>', 'auto (default), link (XDP link / tcx) or netlink (legacy IFLA_XDP / cls_bpf)', 'auto')
    .option('--priority <n>', 'tc hooks through netlink: the cls_bpf filter priority, 1 runs first (default: after the filters already there)')
    .action(async (file: string, opts: LoadCliOptions) => {
      const hook = opts.hook!;
      if (!['xdp', 'ingress', 'egress'].includes(hook)) throw new UsageError(`--hook ${hook}: must be xdp, ingress or egress`);
      if (!['auto', 'link', 'netlink'].includes(opts.attach)) throw new UsageError(`--attach ${opts.attach}: must be auto, link or netlink`);
      const forMs = opts.for === undefined ? undefined : parseDuration(opts.for, '--for');
      const priority = parsePriority(opts.priority);
      if (priority !== undefined && hook === 'xdp') throw new UsageError('--priority applies to tc ingress and egress (a cls_bpf filter), not xdp');
      const { readObjectFile, chooseProgram, loadObjectProgram } = await import('../../elf/load.js');
      const object = readObjectFile(file);
      const name = chooseProgram(object, { select: opts.section, wantType: hook === 'xdp' ? 'xdp' : 'sched_cls' });
      const chosen = object.programs.find((p) => p.name === name)!;
      const want = hook === 'xdp' ? 'xdp' : 'sched_cls';
      if (chosen.type !== undefined && chosen.type !== want) {
        throw new UsageError(`program ${name} (section ${chosen.section}) is a ${chosen.type} program; --hook ${hook} needs ${want}`);
      }
      if (typeof process.getuid === 'function' && process.getuid() !== 0) {
        throw new NetmangleError('netmangle load needs root (CAP_BPF and CAP_NET_ADMIN) to load and attach programs', { hint: 'run it with sudo' });
      }
      const { attachProgram } = await import('../../kernel/attach.js');
      const { guardedOwner, guardianReady, refuseHeldHook, refuseOrphanedHook } = await import('../../live/guardian.js');
      refuseHeldHook({ netns: opts.netns, dev: opts.dev!, hook, priority });
      refuseOrphanedHook({ netns: opts.netns, dev: opts.dev!, hook });
      const loaded = loadObjectProgram(object, name);
      let attachment;
      try {
        attachment = attachProgram(loaded.prog, { dev: opts.dev!, hook: hook as 'xdp' | 'ingress' | 'egress', netns: opts.netns, path: opts.attach as 'auto' | 'link' | 'netlink',
          tcPriority: priority, owner: guardedOwner([{ name, text: `${name} from ${file}` }]),
        });
      } catch (err) {
        loaded.close();
        throw err;
      }
      // Watched from before the "attached" line, which is what scripts wait for: the interface
      // (or its namespace) going away detaches and exits 1, as for run.
      let watch: import('../../kernel/linkwatch.js').LinkWatch;
      try {
        const { watchLink } = await import('../../kernel/linkwatch.js');
        watch = watchLink(attachment.dev, attachment.ifindex, attachment.netns);
      } catch (err) {
        attachment.detach();
        loaded.close();
        throw err;
      }
      let watchTimer: NodeJS.Timeout | undefined;
      // Listening before "attached" is printed (see run): a signal right after it detaches.
      const stop = new Promise<string>((resolve) => {
        const on = (sig: NodeJS.Signals) => resolve(sig);
        process.once('SIGINT', on);
        process.once('SIGTERM', on);
        process.once('SIGHUP', on);
        if (forMs !== undefined) setLongTimeout(() => resolve(`--for ${forMs} ms`), forMs);
        watchTimer = setInterval(() => {
          let why: string | undefined;
          try {
            why = watch.check();
          } catch (err) {
            why = `cannot watch the interface: ${describeError(err)}`;
          }
          if (!why) return;
          process.stderr.write(`netmangle: ${printable(why)}; detaching\n`);
          process.exitCode = 1;
          resolve(why);
        }, 250);
      });
      // "attached" only once a netlink attachment is covered (see run).
      if (attachment.path === 'netlink') await Promise.race([guardianReady(), stop]);
      const where = `${attachment.dev} ${attachment.hook}${attachment.netns ? ` (netns ${attachment.netns})` : ''}`;
      process.stdout.write(`${printable(`attached ${name} (section ${chosen.section}) from ${file} to ${where} via ${attachment.path}, program id ${loaded.prog.id}`)}\n`);
      if (attachment.warning) process.stderr.write(`warning: ${printable(attachment.warning)}\n`);
      let reason = 'error';
      // Signal listeners do not keep Node running; this timer does, until a signal or --for.
      const keepAlive = setInterval(() => {}, 1 << 30);
      try {
        reason = await stop;
      } finally {
        clearInterval(keepAlive);
        clearInterval(watchTimer);
        watch.close();
        try {
          attachment.detach();
        } catch (err) {
          process.stderr.write(`netmangle: while detaching: ${printable(describeError(err), { multiline: true })}\n`);
          process.exitCode = 1;
        }
        loaded.close();
      }
      process.stdout.write(`detached (${printable(reason)})\n`);
    });
}
