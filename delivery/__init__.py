"""Results out: alerts, stop events and ETA updates to MQTT and signed webhooks,
each channel with its own cursor over the event revisions (``deliverer``)."""
