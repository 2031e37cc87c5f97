/**
 * A problem with the gateway's configuration: the file, the environment, or a
 * rule only the fleet can check at start-up (pools, pins, worker keys, cluster
 * credentials). Its message is one line naming where. A domain error, not a
 * CLI one: `kvgate` maps it to exit code 2, a reload logs it and keeps the
 * running config.
 */
export class ConfigError extends Error {
  override name = 'ConfigError';
}
