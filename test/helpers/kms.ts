import { KMSClient } from '@aws-sdk/client-kms';
import { startEmulator, type EmulatorOptions, type RunningEmulator } from '../../src/kms/emulator/index.js';

export interface TestKms {
  emulator: RunningEmulator;
  client: KMSClient;
  close(): Promise<void>;
}

/** Starts an in-process emulator on an ephemeral loopback port and a real SDK client for it. */
export async function startTestKms(options: EmulatorOptions = {}): Promise<TestKms> {
  const emulator = await startEmulator({ quota: Infinity, ...options });
  const client = new KMSClient({
    endpoint: emulator.url,
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIDTESTADMIN', secretAccessKey: 'test' },
    maxAttempts: 1,
  });
  return {
    emulator,
    client,
    async close() {
      client.destroy();
      await emulator.close();
    },
  };
}
