"""sealink's hardware-in-the-loop pytest plugin: boards, the faulty wire, the gateway, soak."""
