'use client';
// Keeps the subscription on screen current: every change of the user's row arrives as an
// update from relay; after a gap relay cannot replay (`resync`), the page refetches its
// snapshot from the server.
import { useWebSocketUpdates } from '@relay/client/react';
import { useRouter } from 'next/navigation';
import { useEffect, useState } from 'react';

import type { Subscription } from '@/lib/db';

export function LiveSubscription({ initial, relayUrl }: {
  initial: Subscription | null;
  relayUrl: string;
}) {
  const router = useRouter();
  const [subscription, setSubscription] = useState(initial);
  const [updates, setUpdates] = useState(0);
  useEffect(() => setSubscription(initial), [initial]); // a refetched snapshot

  const { isConnected } = useWebSocketUpdates((update) => {
    if (update.table !== 'subscription') return;
    const data = update.data as {
      operation: 'INSERT' | 'UPDATE' | 'DELETE';
      row?: Partial<Subscription>;
      truncated?: boolean;
    };
    setUpdates((n) => n + 1);
    if (data.truncated) router.refresh(); // too large for one notification: refetch
    else if (data.operation === 'DELETE') setSubscription(null);
    else setSubscription((current) => ({ ...current, ...data.row }) as Subscription);
  }, {
    client: { url: `${relayUrl}/ws` },
    onResync: () => router.refresh(),
  });

  return (
    <section>
      <p>
        relay: <span data-testid="connection">{isConnected ? 'connected' : 'connecting…'}</span>
        {' · '}<span data-testid="updates">{updates}</span> live updates
      </p>
      {subscription ? (
        <p>
          Plan: <strong data-testid="plan">{subscription.plan}</strong>
          {' '}(status {subscription.status}, updated{' '}
          <time dateTime={subscription.updatedAt}>{subscription.updatedAt}</time>)
        </p>
      ) : (
        <p data-testid="plan">No subscription yet.</p>
      )}
    </section>
  );
}
