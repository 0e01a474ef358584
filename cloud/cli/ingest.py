"""``citybrain ingest``: store edge devices' hard samples (see :mod:`cloud.ingest`)."""

from __future__ import annotations

import signal

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def ingest(
        broker: str | None = typer.Option(
            None, "--broker", help="mqtt://[user:pass@]host:port (default CITYBRAIN_MQTT_URL)"
        ),
        client_id: str = typer.Option(
            "citybrain-ingest-1",
            "--client-id",
            help="stable client id: the broker queues messages for it while it is down",
        ),
        group: str = typer.Option("ingest", "--group", help="shared-subscription group"),
        batch_size: int = typer.Option(100, "--batch-size", min=1, max=10000),
        batch_ms: int = typer.Option(200, "--batch-ms", min=1, max=60000),
        metrics_port: int | None = typer.Option(
            None, "--metrics-port", min=0, max=65535, help="serve Prometheus metrics here"
        ),
        log_level: str = typer.Option("info", "--log-level", help="debug | info | warning"),
        device_prefix: str = typer.Option(
            "", "--device-prefix", help="ingest only devices whose id starts with this"
        ),
    ) -> None:
        """Consume hard samples from devices into the field_hard pools, exactly once."""
        from cloud.core._logging import configure_logging
        from cloud.core.config import get_settings
        from cloud.errors import InvalidInput
        from cloud.ingest import HardSampleIngest, IngestConfig, parse_broker_url

        configure_logging(level=log_level)
        settings = get_settings()
        url = broker or settings.mqtt_url
        try:
            parse_broker_url(url)
        except ValueError as e:
            raise InvalidInput(str(e), field="--broker") from None
        config = IngestConfig(
            broker_url=url,
            client_id=client_id,
            group=group,
            batch_size=batch_size,
            batch_ms=batch_ms,
            receive_maximum=max(1000, 2 * batch_size),
            metrics_port=metrics_port,
            device_prefix=device_prefix,
        )
        consumer = HardSampleIngest(settings, config)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: consumer.request_stop())
        typer.echo(f"ingest {client_id}: {config.subscription} on {url}", err=True)
        consumer.run_forever()
        typer.echo(f"ingest {client_id}: stopped {consumer.stats.as_dict()}", err=True)
