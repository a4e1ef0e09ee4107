from widgetry.console import main

main()
