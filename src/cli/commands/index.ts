/**
 * Every subcommand, in the order `netmangle --help` lists them. Each is loaded only when it is
 * the one being run (or for the full help), so a command's start-up never pays for another's
 * modules (the lab's schemas, koffi, the VM).
 */
import type { Command } from 'commander';

export type RegisterCommand = (program: Command) => void;

export const commandModules: Record<string, () => Promise<{ register: RegisterCommand }>> = {
  probe: () => import('./probe.js'),
  demo: () => import('./demo.js'),
  run: () => import('./run.js'),
  status: () => import('./status.js'),
  clear: () => import('./status.js'),
  replay: () => import('./replay.js'),
  build: () => import('./build.js'),
  load: () => import('./load.js'),
  lab: () => import('./lab.js'),
};

/** The register functions needed for `argv`: just the named command's, or all of them. */
export async function commandsFor(argv: readonly string[]): Promise<RegisterCommand[]> {
  const name = argv.find((a) => !a.startsWith('-'));
  const loaders = name !== undefined && name in commandModules && name !== 'help'
    ? [commandModules[name]!]
    : [...new Set(Object.values(commandModules))];
  const mods = await Promise.all(loaders.map((load) => load()));
  return [...new Set(mods.map((m) => m.register))];
}
