FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml hatch_build.py README.md ./
COPY src ./src
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --create-home widgetry
USER widgetry
WORKDIR /home/widgetry

EXPOSE 8000
CMD ["widgetry", "run", "--host", "0.0.0.0", "--port", "8000"]
