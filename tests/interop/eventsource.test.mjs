// npm `eventsource` (the EventSource most Node code uses) against ssed.

import { EventSource } from 'eventsource';
import { defineScenarios } from './lib/scenarios.mjs';
import { eventsUrl } from './lib/ssed.mjs';

const adapter = {
  async connect({ base, streams, lastEventId, types }) {
    const es = new EventSource(eventsUrl(base, streams, lastEventId));
    const st = { events: [], opens: 0, errors: 0 };
    es.addEventListener('open', () => { st.opens += 1; });
    es.addEventListener('error', () => { st.errors += 1; });
    for (const t of ['message', ...types]) {
      es.addEventListener(t, (e) => st.events.push({ type: e.type, id: e.lastEventId, data: e.data }));
    }
    return {
      snapshot: async () => ({ ...st, events: [...st.events], readyState: es.readyState }),
      close: async () => es.close(),
    };
  },
};

defineScenarios('eventsource (npm)', adapter);
