#pragma once

// The roles' series on /metrics (DESIGN §3.5). Queue, ingest and delivery keep their own atomic
// counters and histograms; scrape hooks copy them into the registry before each page.

#include "common/metrics.h"
#include "delivery/delivery_role.h"
#include "ingest/ingest_role.h"
#include "queue/cluster_tls.h"
#include "queue/queue_role.h"

namespace backstop {

// Any role may be null (not run by this process). The roles and the credentials must outlive
// `metrics`' scrapes.
void RegisterMetrics(metrics::Metrics& metrics, const queue::QueueRole* queue_role,
                     const ingest::IngestRole* ingest_role,
                     const delivery::DeliveryRole* delivery_role,
                     const queue::ClusterCredentials& cluster_credentials);

}  // namespace backstop
