/** Every subcommand, in the order `netmangle --help` lists them. Add a line per command. */
import type { Command } from 'commander';
import { register as probe } from './probe.js';
import { register as lab } from './lab.js';
import { register as demo } from './demo.js';
import { register as run } from './run.js';
import { register as status } from './status.js';
import { register as build } from './build.js';
import { register as load } from './load.js';
import { register as replay } from './replay.js';

export type RegisterCommand = (program: Command) => void;

export const commands: RegisterCommand[] = [probe, demo, run, status, build, load, replay, lab];
