from widgetry.cli import main

main()
